//! wsbench: the wsbridge data-plane benchmark in one binary.
//!
//! wsbench source [--port P] [--size B]       WebSocket source (stdin-driven)
//! wsbench sink [--port P]                    HTTP sink with latency histograms
//! wsbench load --port P [--paths K] [--conns C] [--count N] [--limit-secs S]
//! wsbench run [--quick] [--relays a,b,..] [--wsbridge BIN] [--benthos BIN]
//!             [--node BIN] [--node-relay JS] [--python BIN] [--python-relay PY]
//!             [--work DIR] [--out FILE]      (also writes FILE's .svg chart)
//! wsbench svg REPORT.md [--out FILE.svg]     the chart of a report (default: beside it)
//! wsbench hung [--relays ..] [--total-mib N] [--size B] [--out FILE]
//!                                            peak RSS with one of two subscribers hung
//! wsbench rabbitmq --wsbridge BIN --amqp-url-file F [--broker-pgid PGID]
//!             [--perftest-cp CP] [--java BIN] [--messages-1 N] [--messages-10 N] [--quick]
//!             [--work DIR] [--out FILE] [--kubeconfig F --kubectl BIN]
//!                                            rabbitmq Channels against PerfTest

mod hung;
mod load;
mod msg;
mod procs;
mod rabbitmq;
mod relays;
mod report;
mod run;
mod scenarios;
mod sink;
mod source;
mod svg;
mod zero_loss;

use anyhow::{Result, anyhow, bail};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

struct Args {
    flags: HashMap<String, String>,
    switches: Vec<String>,
}

impl Args {
    fn parse(argv: &[String]) -> Result<Args> {
        let mut flags = HashMap::new();
        let mut switches = Vec::new();
        let mut i = 0;
        while i < argv.len() {
            let a = &argv[i];
            let Some(name) = a.strip_prefix("--") else { bail!("unexpected argument {a}") };
            if name == "quick" {
                switches.push(name.to_string());
                i += 1;
                continue;
            }
            let v = argv.get(i + 1).ok_or_else(|| anyhow!("{a} needs a value"))?;
            flags.insert(name.to_string(), v.clone());
            i += 2;
        }
        Ok(Args { flags, switches })
    }
    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.flags.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| anyhow!("bad value for --{name}: {v}")),
        }
    }
    fn path(&self, name: &str) -> Option<PathBuf> {
        self.flags.get(name).filter(|v| !v.is_empty()).map(PathBuf::from)
    }
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let cmd = argv.get(1).map(String::as_str).unwrap_or("");
    if cmd == "svg" {
        let report = PathBuf::from(argv.get(2).ok_or_else(|| anyhow!("usage: wsbench svg REPORT.md [--out FILE.svg]"))?);
        let out = Args::parse(argv.get(3..).unwrap_or(&[]))?.path("out").unwrap_or_else(|| report.with_extension("svg"));
        return run::write_chart(&std::fs::read_to_string(&report)?, &out);
    }
    let args = Args::parse(argv.get(2..).unwrap_or(&[]))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cmd {
        "source" => rt.block_on(source::main(args.get("port", 0)?, args.get("size", 256)?)),
        "sink" => rt.block_on(sink::main(args.get("port", 0)?)),
        "load" => rt.block_on(load::main(
            args.get("port", 0)?,
            args.get("paths", 1)?,
            args.get("conns", 64)?,
            args.get("count", 10_000)?,
            args.get("size", 256)?,
            Duration::from_secs(args.get("limit-secs", 60)?),
        )),
        "run" => rt.block_on(run::main(opts(&args, &argv)?)),
        "hung" => rt.block_on(hung::main(opts(&args, &argv)?, args.get("total-mib", 1024)?, args.get("size", 1_000_000)?)),
        "rabbitmq" => {
            let quick = args.switches.iter().any(|s| s == "quick");
            rt.block_on(rabbitmq::main(rabbitmq::Opts {
                wsbridge: args.path("wsbridge").ok_or_else(|| anyhow!("--wsbridge BIN is required"))?,
                url_file: args.path("amqp-url-file").ok_or_else(|| anyhow!("--amqp-url-file FILE is required"))?,
                broker_pgid: args.flags.get("broker-pgid").and_then(|v| v.parse().ok()),
                perftest_cp: args.flags.get("perftest-cp").filter(|v| !v.is_empty()).cloned(),
                java: args.get("java", "java".to_string())?,
                work: args.path("work").unwrap_or_else(std::env::temp_dir).join(format!("wsbench-rabbitmq-{}", std::process::id())),
                out: args.path("out"),
                messages_1: args.get("messages-1", if quick { 2_000 } else { 100_000 })?,
                messages_10: args.get("messages-10", if quick { 500 } else { 20_000 })?,
                command_line: std::env::var("WSBENCH_COMMAND").unwrap_or_else(|_| argv.join(" ")),
                quick,
                cluster: args.path("kubeconfig").map(|kubeconfig| rabbitmq::Cluster {
                    kubeconfig,
                    kubectl: args.path("kubectl").unwrap_or_else(|| "kubectl".into()),
                }),
            }))
        }
        _ => bail!("usage: wsbench source|sink|load|run|hung|rabbitmq|svg [options] (see src/main.rs)"),
    }
}

/// The relays and where they are, for `run` and `hung`.
fn opts(args: &Args, argv: &[String]) -> Result<run::Opts> {
    let relays: String = args.get("relays", "wsbridge,benthos,node,python".to_string())?;
    Ok(run::Opts {
        quick: args.switches.iter().any(|s| s == "quick"),
        relays: relays.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        wsbridge: args.path("wsbridge"),
        benthos: args.path("benthos"),
        node: args.path("node"),
        node_relay: args.path("node-relay"),
        python: args.path("python"),
        python_relay: args.path("python-relay"),
        work: args.path("work").unwrap_or_else(std::env::temp_dir).join(format!("wsbench-{}", std::process::id())),
        out: args.path("out"),
        command_line: std::env::var("WSBENCH_COMMAND").unwrap_or_else(|_| argv.join(" ")),
        repeat: args.get("repeat", 1)?,
    })
}
