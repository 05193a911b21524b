//! The consumer: reads one xbstream from STDIN or N from named pipes and turns it back into files (`extract`),
//! checking every byte against the producer's manifest.

pub mod cli;
