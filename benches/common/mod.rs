//! What the `harness = false` benches share: their knobs come from the environment.

use std::str::FromStr;

/// The value of environment variable `name`, or `default` if it is unset or does not parse.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
