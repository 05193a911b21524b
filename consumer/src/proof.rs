//! The proof of an extraction, in phases, run once every stream has ended cleanly, so that nothing unproven ever
//! looks complete (see [`crate::extract`]): every handed-over write settled and the manifest handed over, every
//! record checked by the writer that owns its file (most of them already, as the manifest arrived:
//! `manifest_feed.rs`), the streams' tallies checked, then the commit. [`check_streams`] is shared with `--list`
//! and `put`.

use std::fs::File;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::Sender;
use proto::{Manifest, StreamingError, MANIFEST_NAME};
use runtime::cancel::{recv, send, Cancel};
use runtime::stats::StreamStats;

use crate::config::ExtractConfig;
use crate::dispatch::{Verified, WriterMessage, MISSING_EXAMPLES};
use crate::manifest_feed::{record_key, Fed, RecordDispatch};
use crate::source::{check_markers, missing_manifest, StreamEnd};
use crate::target::Target;

pub(crate) struct Outcome {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    /// Files checked while the streams still flowed.
    pub(crate) checked_during_stream: u64,
    /// Files given their mode and mtime on a descriptor still open.
    pub(crate) set_on_descriptor: u64,
    pub(crate) proven: bool,
    /// The manifest says the files are encrypted (`<path>.age`, kept as they are).
    pub(crate) encrypted: bool,
    /// They were decrypted (`--decrypt`): every one authenticated, under the backup key of this fingerprint.
    pub(crate) decrypted: Option<String>,
    pub(crate) streams: Vec<StreamStats>,
}

/// Phases 1–3 (see [`crate::extract`]'s module doc), run once every stream has ended cleanly.
pub(crate) fn prove_and_commit(
    config: &ExtractConfig,
    keyring: Option<&crate::decrypt_stage::Keyring>,
    target: &Target,
    writers: &[Sender<WriterMessage>],
    streams: &[StreamEnd],
    fed: Fed,
    cancel: &Cancel,
) -> Result<Outcome> {
    // An empty stream is what a failed producer leaves behind (`producer ... | consumer` without pipefail):
    // never a successful restore.
    if streams.iter().all(|end| end.chunks == 0) {
        bail!("no data: every stream ended before its first chunk (did the producer fail?)");
    }
    // Ours (every stream starts with a marker of one backup) or foreign (none does).
    let ours = check_markers(streams)?;
    // 1. End of streams: every handed-over write done (each writer settles), then the manifest collected.
    let phase = Instant::now();
    let mut settled = Vec::with_capacity(writers.len());
    for writer in writers {
        let (reply, answer) = crossbeam_channel::bounded(1);
        send(writer, WriterMessage::Settle(reply), cancel)?;
        settled.push(answer);
    }
    for answer in settled {
        recv(&answer, cancel)?.ok_or_else(|| anyhow!("a writer stopped"))?;
    }
    let mut manifest_file = None;
    for writer in writers {
        let (reply, answer) = crossbeam_channel::bounded(1);
        send(writer, WriterMessage::EndOfStreams(reply), cancel)?;
        if let Some(found) = recv(&answer, cancel)?.flatten() {
            manifest_file = Some(found);
        }
    }
    {
        let head = match manifest_file {
            // Read as it arrived, every record handed over.
            Some(_) if fed.manifest.is_some() => {
                let head = fed.manifest.expect("matched");
                check_backup_id(&head, ours.as_deref())?;
                Some(head)
            }
            Some(_) if fed.error.is_some() => return Err(fed.error.expect("matched")),
            // Not read as it arrived (decrypted; pieces out of order): read from its staged file, past the records
            // already handed over.
            Some(file) => Some(check_against_manifest(config, writers, ours.as_deref(), file, fed.records, cancel)?),
            None if ours.is_some() => return Err(missing_manifest(streams, ours.as_deref().unwrap_or_default())),
            None if config.require_manifest => {
                bail!("the stream carries no {MANIFEST_NAME} (--require-manifest): completeness cannot be proven")
            }
            None => {
                log::warn!(
                    "the stream carries no {MANIFEST_NAME} (not made by our producer?): extracted as mbstream -x would, \
                     but completeness is unproven (chunk CRCs, offsets and end-of-file chunks were checked)"
                );
                None
            }
        };
        let proven = head.is_some();
        let encrypted = head.as_ref().is_some_and(|head| head.encryption.is_some());
        if config.decrypt.is_some() && !encrypted {
            bail!("--decrypt: the stream's manifest describes a backup that is not encrypted");
        }
        if encrypted && config.decompress && config.decrypt.is_none() {
            log::warn!("--decompress: this backup's files are encrypted, so they are kept as they came (`.zst.age`)");
        }
        // 2. Verify: every writer finishes its checks at the same time.
        let mut answers = Vec::with_capacity(writers.len());
        for writer in writers {
            let (reply, answer) = crossbeam_channel::bounded(1);
            send(writer, WriterMessage::Verify(proven, reply), cancel)?;
            answers.push(answer);
        }
        let mut found = Verified::default();
        for answer in answers {
            let verified = recv(&answer, cancel)?.ok_or_else(|| anyhow!("a writer stopped"))??;
            found.files += verified.files;
            found.bytes += verified.bytes;
            found.during_stream += verified.during_stream;
            found.on_descriptor += verified.on_descriptor;
            found.missing += verified.missing;
            found.missing_examples.extend(verified.missing_examples);
        }
        if found.missing > 0 {
            found.missing_examples.sort();
            found.missing_examples.truncate(MISSING_EXAMPLES);
            bail!(
                "{} file(s) listed in the manifest never arrived: {}{}",
                found.missing,
                found.missing_examples.join(", "),
                if found.missing > found.missing_examples.len() as u64 { ", …" } else { "" }
            );
        }
        // A partial restore's streams carry only the chosen files: their tallies are not the backup's, and the
        // directories are only those the files need (made as they were created).
        let partial = config.selection.is_some();
        if let Some(head) = head.as_ref().filter(|_| !partial) {
            // Decrypted, the manifest is the encrypted one, which cannot count its own chunks: every file was
            // proven against it, authenticated, and that is the proof.
            if config.decrypt.is_none() {
                check_streams(head, streams)?;
            }
            // Placeholders are not part of the backed-up tree: not counted among its files.
            found.files -= target.stage_directories(&head.directories)?;
        }

        log::info!(
            "verified {} files ({} of them while the streams flowed, as the manifest came) in {:.2} s after the streams",
            found.files,
            found.during_stream,
            phase.elapsed().as_secs_f64()
        );
        let phase = Instant::now();
        // 3. Commit: move the staged tree into place (every conflict checked first), sync, manifest last.
        // A partial restore is not the whole backup: the manifest, which would say it is, stays out of OUT.
        if partial && proven {
            target.discard(std::ffi::OsStr::new(MANIFEST_NAME))?;
        }
        let last = (proven && !partial).then(|| std::ffi::OsStr::new(MANIFEST_NAME));
        target.commit(last, config.fsync)?;
        if let Some(head) = head.as_ref().filter(|_| !partial) {
            target.restore_directories(&head.directories, config.fsync)?;
        }
        log::info!("committed in {:.2} s", phase.elapsed().as_secs_f64());
        Ok(Outcome {
            files: found.files,
            bytes: found.bytes,
            checked_during_stream: found.during_stream,
            set_on_descriptor: found.on_descriptor,
            proven,
            encrypted: encrypted && config.decrypt.is_none(),
            decrypted: keyring.and_then(|keyring| keyring.key()).map(|key| key.fingerprint()),
            streams: streams
                .iter()
                .map(|end| StreamStats {
                    index: end.index,
                    name: end.name.clone(),
                    bytes: end.bytes,
                    chunks: end.chunks,
                    sha1: end.sha1.clone(),
                })
                .collect(),
        })
    }
}

/// The manifest belongs to the streams' backup (`ours`: their markers' id).
fn check_backup_id(head: &Manifest, ours: Option<&str>) -> Result<()> {
    if head.backup_id.as_deref() != ours {
        bail!(
            "the manifest is from backup {}, but the streams' markers say backup {}: refusing it",
            head.backup_id.as_deref().unwrap_or("(none)"),
            ours.unwrap_or("(none: a foreign stream)")
        );
    }
    Ok(())
}

/// Phase 2's first half, for a manifest not read as it arrived: reads it from its staged file record by record (it
/// is never all in memory, so its size, a hundred bytes a file, does not count against the budget), checks that it
/// belongs to the streams' backup (`ours`: their markers' id), and sends each record after the first `skip` (those
/// were handed over as the manifest arrived) to the writer that owns its file, which checks the file then.
/// Returns the manifest without its files.
pub(crate) fn check_against_manifest(
    config: &ExtractConfig,
    writers: &[Sender<WriterMessage>],
    ours: Option<&str>,
    file: File,
    skip: u64,
    cancel: &Cancel,
) -> Result<Manifest> {
    let mut dispatch = RecordDispatch::new(config, writers);
    let mut seen = 0u64;
    let head = Manifest::read_streaming(
        file,
        |head: &Manifest| check_backup_id(head, ours),
        |record| -> Result<()> {
            seen += 1;
            match seen > skip {
                true => dispatch.push(record_key(config, &record), record, cancel),
                false => Ok(()),
            }
        },
    )
    .map_err(|e| match e {
        StreamingError::Manifest(e) => anyhow::Error::new(e).context("cannot read the stream's manifest"),
        StreamingError::Stopped(e) => e,
    })?;
    dispatch.flush(cancel)?;
    Ok(head)
}

/// Every stream carried exactly what the manifest says it was sent.
pub(crate) fn check_streams(manifest: &Manifest, streams: &[StreamEnd]) -> Result<()> {
    if manifest.streams.len() != streams.len() {
        bail!(
            "the manifest says the backup was written to {} stream(s), but {} were read: use --fifo-streams {}",
            manifest.streams.len(),
            streams.len(),
            manifest.streams.len()
        );
    }
    for (record, end) in manifest.streams.iter().zip(streams) {
        let counted = end.counted;
        if record.chunks != counted.chunks || record.bytes != counted.bytes {
            bail!(
                "stream {} ({}) carried {} chunks, {} bytes; the manifest says {} chunks, {} bytes",
                end.index,
                end.name,
                counted.chunks,
                counted.bytes,
                record.chunks,
                record.bytes
            );
        }
    }
    Ok(())
}
