//! Assertions on what a player received compared with what was published.
//!
//! The contract under test (ARCHITECTURE.md, invariants 2 and 3): a player
//! starts with the metadata and sequence headers, then a keyframe, then
//! gets every later frame exactly once, in order, with the publisher's
//! timestamps and byte-identical payloads.

use baton_common::media::{MediaFrame, MediaKind};

use crate::synth::frame_index;

/// What [`assert_playback`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackCheck {
    /// Position in the published media of the player's first media frame
    /// (a keyframe).
    pub start: usize,
    /// Media frames (after the headers) the player received.
    pub media_frames: usize,
    /// Header frames (metadata, sequence headers) before the first media frame.
    pub header_frames: usize,
}

/// Whether `frame` is configuration rather than media: metadata or a
/// sequence header.
pub fn is_header(frame: &MediaFrame) -> bool {
    frame.kind == MediaKind::Data || frame.is_sequence_header()
}

/// Checks `received` against the published `sent_headers` and `sent`
/// media (in publish order) and panics with a description of the first
/// difference. See [`check_playback`].
#[track_caller]
pub fn assert_playback(
    who: &str,
    received: &[MediaFrame],
    sent_headers: &[MediaFrame],
    sent: &[MediaFrame],
) -> PlaybackCheck {
    match check_playback(received, sent_headers, sent) {
        Ok(check) => check,
        Err(why) => panic!(
            "{who}: {why}\nreceived ({} frames): {}\npublished ({} media frames): {}",
            received.len(),
            frame_summary(received),
            sent.len(),
            frame_summary(sent)
        ),
    }
}

/// `received` must be: each of `sent_headers` exactly once (metadata
/// first, byte-identical, same timestamps), then a keyframe from `sent`,
/// then the frames published after it in order without gaps, duplicates or
/// extra headers, each identical (kind, timestamp, payload) to what was
/// published. `received` may end before `sent` does.
pub fn check_playback(
    received: &[MediaFrame],
    sent_headers: &[MediaFrame],
    sent: &[MediaFrame],
) -> Result<PlaybackCheck, String> {
    let header_frames = received.iter().take_while(|f| is_header(f)).count();
    let (headers, media) = received.split_at(header_frames);
    if headers.len() != sent_headers.len() {
        return Err(format!(
            "expected {} header frames before the first media frame, got {}",
            sent_headers.len(),
            headers.len()
        ));
    }
    if let Some(meta) = sent_headers.iter().find(|f| f.kind == MediaKind::Data) {
        if headers.first() != Some(meta) {
            return Err("the first frame is not the published onMetaData".into());
        }
    }
    for expected in sent_headers {
        let matching = headers.iter().filter(|f| *f == expected).count();
        if matching != 1 {
            return Err(format!(
                "header {} received {matching} times (byte-identical, same timestamp)",
                describe(expected)
            ));
        }
    }
    let Some(first) = media.first() else {
        return Err("no media frame received after the headers".into());
    };
    if !first.is_keyframe() {
        return Err(format!(
            "first media frame {} is not a keyframe",
            describe(first)
        ));
    }
    let index = frame_index(first).ok_or("first media frame carries no synthetic index")?;
    let start = sent
        .iter()
        .position(|f| frame_index(f) == Some(index))
        .ok_or_else(|| format!("first media frame {} was never published", describe(first)))?;
    for (i, got) in media.iter().enumerate() {
        let Some(want) = sent.get(start + i) else {
            return Err(format!(
                "received {} media frames from position {start}, more than the {} published from there; extra: {}",
                media.len(),
                sent.len() - start,
                describe(got)
            ));
        };
        if got != want {
            return Err(format!(
                "media frame #{i} (published position {}) differs: got {}, published {}{}",
                start + i,
                describe(got),
                describe(want),
                if got.kind == want.kind
                    && got.timestamp == want.timestamp
                    && frame_index(got) == frame_index(want)
                {
                    " (payload bytes differ)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(PlaybackCheck {
        start,
        media_frames: media.len(),
        header_frames,
    })
}

/// One frame in a few characters: `meta`, `Vsh`, `Ash`, `K12@400`
/// (keyframe index 12 at 400 ms), `v13@433`, `a14@426`.
pub fn describe(frame: &MediaFrame) -> String {
    let ts = frame.timestamp;
    match (frame.kind, frame_index(frame)) {
        (MediaKind::Data, _) => format!("meta@{ts}"),
        (MediaKind::Video, _) if frame.is_sequence_header() => format!("Vsh@{ts}"),
        (MediaKind::Audio, _) if frame.is_sequence_header() => format!("Ash@{ts}"),
        (MediaKind::Video, Some(i)) if frame.is_keyframe() => format!("K{i}@{ts}"),
        (MediaKind::Video, Some(i)) => format!("v{i}@{ts}"),
        (MediaKind::Audio, Some(i)) => format!("a{i}@{ts}"),
        (MediaKind::Video, None) if frame.is_keyframe() => {
            format!("K?@{ts}/{}B", frame.payload.len())
        }
        (MediaKind::Video, None) => format!("v?@{ts}/{}B", frame.payload.len()),
        (MediaKind::Audio, None) => format!("a?@{ts}/{}B", frame.payload.len()),
    }
}

/// A compact listing of `frames` (the first 40 and the last 10).
pub fn frame_summary(frames: &[MediaFrame]) -> String {
    const HEAD: usize = 40;
    const TAIL: usize = 10;
    if frames.len() <= HEAD + TAIL {
        return frames.iter().map(describe).collect::<Vec<_>>().join(" ");
    }
    let head: Vec<String> = frames[..HEAD].iter().map(describe).collect();
    let tail: Vec<String> = frames[frames.len() - TAIL..].iter().map(describe).collect();
    format!(
        "{} … ({} more) … {}",
        head.join(" "),
        frames.len() - HEAD - TAIL,
        tail.join(" ")
    )
}

/// Media frames of `frames` that are keyframes, as positions.
pub fn keyframe_positions(frames: &[MediaFrame]) -> Vec<usize> {
    frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_keyframe())
        .map(|(i, _)| i)
        .collect()
}

/// Position in `sent` of the last keyframe (where a player joining now
/// must start).
pub fn last_keyframe(sent: &[MediaFrame]) -> Option<usize> {
    sent.iter().rposition(|f| f.is_keyframe())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Synth;

    #[test]
    fn accepts_a_correct_join_and_rejects_gaps_and_dups() {
        let mut s = Synth::standard();
        let headers = s.headers();
        let sent = s.frames(200);
        let key = last_keyframe(&sent[..100]).expect("a keyframe");
        let mut got = headers.clone();
        got.extend_from_slice(&sent[key..150]);
        let check = check_playback(&got, &headers, &sent).expect("valid");
        assert_eq!(check.start, key);
        assert_eq!(check.media_frames, 150 - key);

        let mut gap = got.clone();
        gap.remove(10);
        assert!(check_playback(&gap, &headers, &sent).is_err());
        let mut dup = got.clone();
        dup.insert(10, dup[10].clone());
        assert!(check_playback(&dup, &headers, &sent).is_err());
        let mut late = headers.clone();
        late.extend_from_slice(&sent[key + 1..150]);
        assert!(check_playback(&late, &headers, &sent).is_err());
        let mut no_headers = Vec::new();
        no_headers.extend_from_slice(&sent[key..150]);
        assert!(check_playback(&no_headers, &headers, &sent).is_err());
        let mut bad_ts = got.clone();
        let last = bad_ts.len() - 1;
        bad_ts[last].timestamp += 1;
        assert!(check_playback(&bad_ts, &headers, &sent).is_err());
    }
}
