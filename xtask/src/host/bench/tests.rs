//! Tests of the bench report: medians, ratios, the table and the chart.

use crate::guest::bench::Raw;

use super::report::{median, percentile, Row, overlap, table, svg};

fn raw(name: &str, msg: f64) -> Raw {
    Raw {
        name: name.into(),
        messaging_s: vec![msg, msg * 2.0, msg * 0.9],
        cpu_s: vec![2.0],
        ..Default::default()
    }
}

#[test]
fn medians_and_ratios() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&[4.0, 1.0]), Some(2.5));
    assert_eq!(median(&[]), None);
    assert_eq!(percentile(&[5.0, 1.0, 9.0, 3.0], 0.99), Some(9.0));
    let rows: Vec<Row> = [raw("eevdf", 1.0), raw("fifo", 2.0)]
        .iter()
        .map(Row::from_raw)
        .collect();
    let t = table(&rows, 2, "tcg", 3);
    // Medians, their ratio, and the spread of the runs (1, 2 and 0.9
    // times the median) against the base's median.
    assert!(t.contains("| eevdf | 1.00 (1.00x, 0.50-1.11x)"), "{t}");
    assert!(t.contains("| fifo | 2.00 (0.50x, 0.25-0.56x)"), "{t}");
    assert!(overlap(Some((1.0, 2.0)), Some((1.9, 3.0))));
    assert!(!overlap(Some((1.0, 2.0)), Some((2.1, 3.0))));
    assert!(!overlap(None, Some((2.1, 3.0))));
    let svg = svg(&rows);
    assert!(svg.contains("fifo messaging: 0.50x"), "{svg}");
}

#[test]
fn a_failed_configuration_is_marked() {
    let mut r = raw("election", 1.0);
    r.failure = Some("ejected".into());
    let rows = vec![Row::from_raw(&r)];
    assert!(table(&rows, 2, "tcg", 1).contains("election (FAILED)"));
}
