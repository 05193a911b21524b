//! `producer`: a thin binary over the `producer` library.

fn main() {
    std::process::exit(producer::app::main());
}
