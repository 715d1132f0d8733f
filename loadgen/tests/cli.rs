//! The `loadgen` command line: clear errors naming the file, and the printed zone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn loadgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).output().unwrap()
}

#[test]
fn bad_scenarios_get_a_clear_error_and_a_good_one_prints_its_zone() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[provider]]\nname = \"x\"\ndomains = [\"x.test\"]\nmx = [{ host = \"mx.x.test\", address = \"10.0.0.1\", port = 25 }]\n").unwrap();
    let output = loadgen(&["dns", "--scenario", bad.to_str().unwrap(), "--print"]);
    assert_eq!(output.status.code(), Some(2));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("bad.toml") && error.contains("not a loopback address"), "{error}");

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[[provider]]\nname = \"x\"\ndomain = [\"x.test\"]\n").unwrap();
    let error =
        String::from_utf8_lossy(&loadgen(&["dns", "--scenario", typo.to_str().unwrap(), "--print"]).stderr).to_string();
    assert!(error.contains("typo.toml:3") && error.contains("domain"), "{error}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[[provider]]\nname = \"x\"\ndomains = [\"x.test\"]\nmx = [{ host = \"mx.x.test\", address = \"127.0.0.40\", port = 2525 }]\n").unwrap();
    let output = loadgen(&["dns", "--scenario", good.to_str().unwrap(), "--print"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "mx.x.test. 300 IN A 127.0.0.40\nx.test. 300 IN MX 10 mx.x.test.\n"
    );
}

#[test]
fn inject_reports_what_the_mta_accepted_and_refuses_a_remote_target() {
    // A port found free may be taken before the sink binds it: try a few.
    let (port, fleet) = (0..5)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.24:0").unwrap().local_addr().unwrap().port();
            let text = format!(
                "[[provider]]\nname = \"p\"\ndomains = [\"a.test\", \"b.test\"]\nmx = [{{ host = \"mx.p.test\", address = \"127.0.0.24\", port = {port} }}]\n"
            );
            let scenario = loadgen::scenario::Scenario::parse(&text, "cli.toml").unwrap();
            loadgen::sink::start(&scenario).ok().map(|fleet| (port, fleet))
        })
        .expect("a free port for the sink");
    let target = format!("127.0.0.24:{port}");
    let output = loadgen(&[
        "inject",
        "--target",
        &target,
        "--domains",
        "a.test,b.test",
        "--messages",
        "60",
        "--size",
        "500",
        "--size-max",
        "40000",
        "--connections",
        "3",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("INJECT recipients=60 accepted=60 refused=0"), "{stdout}");
    assert_eq!(fleet.state().accepted.len(), 60);

    let output = loadgen(&["inject", "--target", "192.0.2.1:25", "--domains", "a.test"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}
