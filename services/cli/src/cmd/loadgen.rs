//! `aftercart loadgen`: realistic signed Shopify traffic against an ingress, with a report.

use aftercart_loadgen::{run::run_until, LoadgenArgs, Pool};
use aftercart_runtime::shutdown::Shutdown;
use aftercart_runtime::EX_USAGE;

pub async fn run_loadgen(args: LoadgenArgs) -> i32 {
    let (plan, traffic) = match args.validate() {
        Ok(valid) => valid,
        Err(problems) => {
            eprintln!("invalid configuration ({} problem(s)):", problems.len());
            for problem in problems {
                eprintln!("  - {problem}");
            }
            return EX_USAGE;
        }
    };
    // Bodies are built and signed before the clock starts.
    let pool = Pool::build(&traffic);
    // A stop signal ends the window early; the report still comes.
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let stop = shutdown.token();
    match run_until(plan, pool, async move { stop.cancelled().await }).await {
        Ok(report) if args.json => match serde_json::to_string(&report) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(error) => {
                eprintln!("cannot encode the report: {error}");
                1
            }
        },
        Ok(report) => {
            println!("{report}");
            0
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            1
        }
    }
}
