//! The evaluation harness with what real tailnets do ([`Scenario::realistic`]):
//! capture sessions, short connections, sparse traffic, late peers, nodes
//! leaving, agent restarts, a tailnet-wide flow-logging toggle, address
//! changes and upload queue delays (see the `eval` module documentation).

use tally_reconcile::eval::{Event, Scenario, generate, run, score, table};
use tally_reconcile::{Config, FindingClass};

#[test]
fn explore() {
    let cfg = Config::default();
    for seed in [1u64, 2, 3] {
        let g = generate(&Scenario::realistic(seed, true));
        let r = run(&g, cfg, &[]).expect("run");
        let s = score(&g.labels, &r, &cfg);
        println!("seed {seed}\n{}", table(&s));
        let c = generate(&Scenario::realistic(seed + 100, false));
        let rc = run(&c, cfg, &[]).expect("run");
        println!("clean {}: {} findings", seed + 100, rc.findings.len());
        for f in rc.findings.iter().take(8) {
            println!("  {:?} {} {:?} {:?} {}", f.1.class, f.1.node, f.1.peer, f.1.window, f.1.detail);
        }
    }
}
