//! Micro-benchmarks of the per-request CPU work before any I/O: Stripe signature verification
//! and event metadata extraction, at 1, 4 and 16 KiB. Throughput is reported in bytes, so
//! criterion prints GiB/s. Run with `cargo bench --bench verify`.
//!
//! Bodies are real fixtures, compacted and padded inside the JSON to the exact size (the same
//! bodies `hookbridge bench --size` sends): for each size, the largest fixture that fits.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hookbridge::bench::body::{compact, event_id, Template};
use hookbridge::event::EventMeta;
use hookbridge::verify::{sign, Verifier};

const SECRET: &str = "whsec_bench_not_a_secret";
const SIZES: [usize; 3] = [1024, 4096, 16384];
const NOW: i64 = 1_731_421_321;

/// A body of exactly `size` bytes: the largest fixture that fits, padded.
fn body(size: usize) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut best: Option<(usize, Template)> = None;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let raw = std::fs::read(&path).unwrap();
        let len = compact(&raw).len();
        if len < size && best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((
                len,
                Template::new(&path.display().to_string(), &raw, Some(size)).unwrap(),
            ));
        }
    }
    let (_, t) = best.unwrap();
    let b = t.body(&event_id(*b"criterio", 1)).to_vec();
    assert_eq!(b.len(), size);
    b
}

fn verification(c: &mut Criterion) {
    let verifier = Verifier::new(&[SECRET], Duration::from_secs(300));
    let mut g = c.benchmark_group("verify");
    for size in SIZES {
        let b = body(size);
        let header = sign(SECRET.as_bytes(), NOW, &b);
        assert!(verifier.verify(Some(header.as_bytes()), &b, NOW).is_ok());
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{}KiB", size / 1024)),
            &b,
            |bench, b| {
                bench.iter(|| {
                    verifier
                        .verify(Some(black_box(header.as_bytes())), black_box(b), NOW)
                        .unwrap()
                })
            },
        );
    }
    g.finish();
}

fn metadata(c: &mut Criterion) {
    let mut g = c.benchmark_group("event_meta_parse");
    for size in SIZES {
        let b = body(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{}KiB", size / 1024)),
            &b,
            |bench, b| bench.iter(|| EventMeta::parse(black_box(b)).unwrap()),
        );
    }
    g.finish();
}

fn signing(c: &mut Criterion) {
    // What the load generator spends per request before sending.
    let mut g = c.benchmark_group("sign");
    let b = body(4096);
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.bench_function("4KiB", |bench| {
        bench.iter(|| sign(SECRET.as_bytes(), NOW, black_box(&b)))
    });
    g.finish();
}

criterion_group!(
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = verification, metadata, signing
);
criterion_main!(benches);
