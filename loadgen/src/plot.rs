//! The run's picture: recipients accepted by the MTA and delivered to the sinks,
//! per second, as an SVG line chart (plotters).

use std::path::Path;
use std::time::SystemTime;

use plotters::prelude::*;

use crate::inject::Injected;

/// Counts per whole second since `start`.
fn per_second(start: SystemTime, times: &[SystemTime], seconds: usize) -> Vec<u64> {
    let mut counts = vec![0u64; seconds];
    for at in times {
        let second = at.duration_since(start).map(|d| d.as_secs() as usize).unwrap_or(0);
        if let Some(count) = counts.get_mut(second) {
            *count += 1;
        }
    }
    counts
}

/// Writes the chart to `path` (SVG).
pub fn write(path: &Path, start: SystemTime, injected: &[Injected], delivered: &[SystemTime]) -> anyhow::Result<()> {
    let accepted = crate::run::accepted_times(injected);
    let last =
        accepted.iter().chain(delivered).filter_map(|at| at.duration_since(start).ok()).max().unwrap_or_default();
    let seconds = last.as_secs() as usize + 1;
    let series = [
        ("accepted by the MTA", per_second(start, &accepted, seconds), BLUE),
        ("delivered to the sinks", per_second(start, delivered, seconds), RED),
    ];
    let top = series.iter().flat_map(|(_, counts, _)| counts.iter()).copied().max().unwrap_or(0).max(1);
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    let draw = |error: &dyn std::fmt::Display| anyhow::anyhow!("{}: drawing the plot: {error}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("loadgen run: recipients per second", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0usize..seconds.max(1), 0u64..top + top / 10 + 1)
        .map_err(|e| draw(&e))?;
    chart.configure_mesh().x_desc("seconds since start").y_desc("recipients / s").draw().map_err(|e| draw(&e))?;
    for (name, counts, color) in series {
        chart
            .draw_series(LineSeries::new(counts.into_iter().enumerate(), color.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_fall_into_their_second() {
        let start = SystemTime::UNIX_EPOCH;
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(per_second(start, &[at(10), at(900), at(1000), at(2999), at(5000)], 3), vec![2, 1, 1]);
    }
}
