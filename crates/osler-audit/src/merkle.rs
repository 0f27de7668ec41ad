//! RFC 9162 §2.1 Merkle tree hashing: leaf = SHA-256(0x00 ‖ entry), node = SHA-256(0x01 ‖
//! left ‖ right), a tree of n > 1 leaves split at the largest power of two below n, the empty
//! tree SHA-256(""). Inclusion (§2.1.3) and consistency (§2.1.4) proofs and their checks.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root of the tree over these leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first, so
/// that an append costs O(log n) and the root after it is known at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// One hash per set bit of `size`, from the highest bit down.
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        // Merge with equal-sized subtrees: one per trailing one-bit of the old size.
        let mut s = self.size;
        while s & 1 == 1 {
            // A trailing one-bit always has its subtree on the stack.
            let left = self.nodes.pop().unwrap_or(node);
            node = node_hash(&left, &node);
            s >>= 1;
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// The tree's root: the subtrees folded from the smallest up.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(first) = it.next() else {
            return empty_root();
        };
        it.fold(*first, |acc, left| node_hash(left, &acc))
    }

    /// Stored form: 8 bytes of size, then the hashes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.size.to_be_bytes().to_vec();
        for n in &self.nodes {
            out.extend_from_slice(n);
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Frontier> {
        let size = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let rest = &b[8..];
        if !rest.len().is_multiple_of(32) || rest.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let nodes = rest
            .chunks_exact(32)
            // `chunks_exact(32)` yields 32-byte slices only: the conversion cannot fail.
            .map(|c| c.try_into().expect("chunks of 32"))
            .collect();
        Some(Frontier { size, nodes })
    }
}

/// PATH(m, D[n]) of RFC 9162 §2.1.3.1: the hashes proving leaf `m` is in the tree of `leaves`.
pub fn inclusion_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = inclusion_proof(m, &leaves[..k]);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(m - k, &leaves[k..]);
        p.push(root(&leaves[..k]));
        p
    }
}

/// RFC 9162 §2.1.3.2: whether `proof` shows `leaf` at `index` in the tree of `size` with `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// PROOF(m, D[n]) of RFC 9162 §2.1.4.1: that the tree of the first `m` leaves is a prefix of
/// the tree of all of them.
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    fn sub(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if complete {
                Vec::new()
            } else {
                vec![root(leaves)]
            };
        }
        let k = split(n);
        if m <= k {
            let mut p = sub(m, &leaves[..k], complete);
            p.push(root(&leaves[k..]));
            p
        } else {
            let mut p = sub(m - k, &leaves[k..], false);
            p.push(root(&leaves[..k]));
            p
        }
    }
    if m == 0 || m > leaves.len() {
        return Vec::new();
    }
    sub(m, leaves, true)
}

/// RFC 9162 §2.1.4.2: whether `proof` shows the tree of `first` leaves (`first_root`) is a
/// prefix of the tree of `second` leaves (`second_root`).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first == 0 {
        return proof.is_empty();
    }
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *first_root && sr == *second_root && s == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn the_empty_tree_and_a_single_leaf_follow_the_rfc() {
        // SHA-256 of the empty string.
        assert_eq!(empty_root()[..4], [0xe3, 0xb0, 0xc4, 0x42],);
        let l = leaf_hash(b"");
        // RFC 6962 test vector: leaf hash of the empty entry.
        assert_eq!(l[..4], [0x6e, 0x34, 0x0b, 0x9c]);
        assert_eq!(root(&[l]), l);
    }

    #[test]
    fn the_frontier_root_equals_the_recursive_root_at_every_size() {
        let all = leaves(70);
        let mut f = Frontier::default();
        assert_eq!(f.root(), empty_root());
        for (i, l) in all.iter().enumerate() {
            f.push(*l);
            assert_eq!(f.root(), root(&all[..=i]), "size {}", i + 1);
            assert_eq!(Frontier::from_bytes(&f.to_bytes()), Some(f.clone()));
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_fail_when_anything_differs() {
        for n in 1..34 {
            let all = leaves(n);
            let r = root(&all);
            for m in 0..n {
                let p = inclusion_proof(m, &all);
                assert!(
                    verify_inclusion(m as u64, n as u64, &all[m], &p, &r),
                    "{m} of {n}"
                );
                let other = leaf_hash(b"other");
                assert!(!verify_inclusion(m as u64, n as u64, &other, &p, &r));
                if n > 1 {
                    assert!(!verify_inclusion(
                        ((m + 1) % n) as u64,
                        n as u64,
                        &all[m],
                        &p,
                        &r
                    ));
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_fail_for_a_rewritten_prefix() {
        for n in 1..34 {
            let all = leaves(n);
            let r = root(&all);
            for m in 1..=n {
                let p = consistency_proof(m, &all);
                let rm = root(&all[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &rm, &r, &p),
                    "{m} → {n}"
                );
                let mut forked = all.clone();
                forked[0] = leaf_hash(b"rewritten");
                let fr = root(&forked[..m]);
                assert!(
                    !verify_consistency(m as u64, n as u64, &fr, &r, &p),
                    "fork {m} → {n}"
                );
            }
        }
    }
}
