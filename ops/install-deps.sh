#!/usr/bin/env bash
# Installs what building and testing ringmail needs on a fresh Debian machine, and
# nothing that is already there. Safe to run again. Needs root (or sudo) only when
# something is missing.
#
#   libclang-dev  bindgen, for RocksDB's bindings (librocksdb-sys)
#   g++, make     RocksDB's C++ (usually present with the toolchain)
#   postfix       smtp-sink / smtp-source / smtpd: real peers in interop tests
#                 (installed "No configuration": no mail service is started)
#   swaks         a real SMTP client in interop tests (with its TLS modules)
#   dnsmasq-base  a local DNS server for tests (not the dnsmasq service)
#   curl          a real HTTP client for the inject API tests
#   e2fsprogs     mkfs.ext4 / e2fsck: the store-fault tests mount an ext4 image
#                 they freeze (fsfreeze, util-linux) or make fail
#   iproute2      ip netns: tests that need IPv6 /64 addresses make a namespace
#   python3-dkim  dkimpy: the independent verifier of the DKIM signatures ringmail
#                 makes (run with /usr/bin/python3), openssl makes the test keys
set -euo pipefail

packages=(libclang-dev g++ make postfix swaks libnet-ssleay-perl libio-socket-ssl-perl dnsmasq-base curl e2fsprogs iproute2 util-linux python3-dkim openssl)

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "install-deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }
