//! A batch of shared byte buffers presented to hyper as one body frame.
//!
//! HTTP-FLV players write many small tags; handing hyper one `Bytes` per
//! tag costs one chunked-encoding header and one queue entry each. A
//! `TagBatch` carries every tag of a batch as a single `Buf` whose
//! `chunks_vectored` exposes the shared buffers directly, so hyper writes
//! the whole batch as one HTTP chunk with one `writev` and nothing is
//! copied.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

#[derive(Debug, Default)]
pub struct TagBatch {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl TagBatch {
    pub fn with_capacity(parts: usize) -> Self {
        TagBatch {
            parts: VecDeque::with_capacity(parts),
            remaining: 0,
        }
    }

    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl From<Bytes> for TagBatch {
    fn from(part: Bytes) -> Self {
        let mut batch = TagBatch::default();
        batch.push(part);
        batch
    }
}

impl FromIterator<Bytes> for TagBatch {
    fn from_iter<I: IntoIterator<Item = Bytes>>(iter: I) -> Self {
        let mut batch = TagBatch::default();
        for part in iter {
            batch.push(part);
        }
        batch
    }
}

impl Buf for TagBatch {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| &b[..])
    }

    fn advance(&mut self, mut count: usize) {
        while count > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            let step = count.min(front.len());
            front.advance(step);
            self.remaining -= step;
            count -= step;
            if front.is_empty() {
                self.parts.pop_front();
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            filled += 1;
        }
        filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_every_byte_across_parts() {
        let mut batch: TagBatch = [
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"fghij"),
        ]
        .into_iter()
        .collect();
        assert_eq!(batch.remaining(), 10);
        let mut slices = [IoSlice::new(&[]); 8];
        assert_eq!(batch.chunks_vectored(&mut slices), 3);
        batch.advance(4);
        assert_eq!(batch.chunk(), b"e");
        let rest = batch.copy_to_bytes(batch.remaining());
        assert_eq!(&rest[..], b"efghij");
        assert!(batch.is_empty());
    }
}
