//! The evaluation harness at default settings: goals of issue 5.

use tally_reconcile::Config;
use tally_reconcile::eval::{Rng, Scenario, generate, run, score, table};

#[test]
fn faults_are_found_with_high_precision_and_recall() {
    let cfg = Config::default();
    for seed in [1u64, 2, 3] {
        let g = generate(&Scenario::small(seed, true));
        let r = run(&g, cfg, &[]).expect("run");
        let s = score(&g.labels, &r, &cfg);
        println!("seed {seed}\n{}", table(&s));
        // Recall and precision are 1 for a class with no fault and no
        // finding: every class must have faults injected for them to mean
        // anything.
        assert!(
            s.classes.iter().all(|c| c.labels > 0),
            "seed {seed}: a class without injected faults\n{}",
            table(&s)
        );
        for c in &s.classes {
            assert!(c.recall() >= 0.99, "recall of {:?}: {}", c.class, table(&s));
            assert!(
                c.precision() >= 0.99,
                "precision of {:?}: {}",
                c.class,
                table(&s)
            );
        }
    }
}

#[test]
fn clean_traffic_with_30s_skew_has_no_findings() {
    let cfg = Config::default();
    for seed in [3u64, 101, 102] {
        let g = generate(&Scenario::small(seed, false));
        let r = run(&g, cfg, &[]).expect("run");
        assert!(
            r.findings.is_empty(),
            "seed {seed}: {:#?}",
            &r.findings[..r.findings.len().min(5)]
        );
    }
}

#[test]
fn kill_and_resume_gives_the_same_findings() {
    let cfg = Config::default();
    let g = generate(&Scenario::small(4, true));
    let whole = run(&g, cfg, &[]).expect("run");
    // Equal runs that found nothing would prove nothing.
    assert!(
        whole.findings.len() >= g.labels.len() && !g.labels.is_empty(),
        "{} findings for {} faults",
        whole.findings.len(),
        g.labels.len()
    );
    let mut rng = Rng::new(99);
    for _ in 0..3 {
        let cuts: Vec<usize> = (0..5)
            .map(|_| rng.range(0, g.events.len() as i64) as usize)
            .collect();
        let cut = run(&g, cfg, &cuts).expect("run with cuts");
        assert_eq!(whole.findings, cut.findings, "cuts at {cuts:?}");
    }
}
