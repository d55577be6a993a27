//! The nexor-relay load generator (bench issue): scenarios bulk, echo,
//! idle and churn against the relay and its peers. Not written yet.

fn main() {
    eprintln!("nexor-bench: not implemented yet (see bench/README.md)");
    std::process::exit(2);
}
