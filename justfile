# Nexus tasks. `just` lists them.
set shell := ["bash", "-euo", "pipefail", "-c"]

# Reuse one target directory across clones and runs (builds are slow on small machines).
export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")

default:
    @just --list

# Build every binary (debug).
build:
    cargo build --workspace --bins

# Run the whole stack on this machine: NATS (started if none answers), agent-core, tool-runner, memory-svc.
up *ARGS: build
    "$CARGO_TARGET_DIR/debug/nexus" up {{ARGS}}

# Talk to the running stack.
chat *ARGS:
    "$CARGO_TARGET_DIR/debug/nexus" chat {{ARGS}}

# Formatting, lints and every test (Rust and the WhatsApp bridge). Needs NATS (JetStream)
# on 127.0.0.1:4222, PostgreSQL on 127.0.0.1:5432, nats-server and Node.js 20+ on PATH, a
# nats-server 2.10+ in ~/.cache/nexus/nats-server-2.15 (or NEXUS_NATS_SERVER_2_10) for the NATS security tests,
# python3 with nats-py (examples/python-plugin/requirements.txt) and mcp-server-time,
# `npm ci` done in crates/tool-runner/tests/mcp-servers, and Debian's chromium and
# chromium-driver for the admin console's browser tests (.ci/run installs all of these).
test:
    cd bridge && npm ci --no-audit --no-fund && npm test
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo build --workspace --bins
    cargo test --workspace

# The property tests (fuzz_*) of every decoder of outside input, with many more cases
# than `just test` runs (PROPTEST_CASES=256 by default there). No NATS needed.
fuzz CASES="20000":
    PROPTEST_CASES={{CASES}} cargo test --workspace --lib fuzz_

# Measure per-turn overhead, throughput, memory and start-up time (release build).
bench:
    cargo build --release --workspace --bins
    "$CARGO_TARGET_DIR/release/nexus-bench"

# The chaos suite at full size (minutes): kills of every service and of NATS under a
# larger load, a failing provider, hostile input, a session of 10,000 turns. Its short
# form runs in `just test`. Needs what `just test` needs.
chaos:
    cargo build --workspace --bins
    NEXUS_CHAOS_SCALE=10 NEXUS_CHAOS_TURNS=10000 cargo test -p agent-core --test chaos -- --test-threads 1

# Needs what `just test` needs, and pngquant (Debian's), which makes the PNGs small.
# Screenshots of the admin console's pages, desktop and phone width, for the README (docs/screenshots/).
screenshots:
    command -v pngquant >/dev/null || { echo "pngquant is needed: apt-get install -y pngquant" >&2; exit 1; }
    cargo build --workspace --bins
    NEXUS_SCREENSHOTS="{{justfile_directory()}}/docs/screenshots" cargo test -p gateway-api --test api browser::
    pngquant --force --ext .png --strip --quality 65-90 --speed 1 docs/screenshots/*.png

# Format the code.
fmt:
    cargo fmt --all
