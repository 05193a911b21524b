//! `consumer`: a thin binary over the `consumer` library.

fn main() {
    std::process::exit(consumer::app::main());
}
