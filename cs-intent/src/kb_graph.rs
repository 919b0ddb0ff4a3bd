//! Saving and restoring the knowledge base's HNSW graph, so a loaded KB
//! searches at once instead of re-inserting every point (36-43 s for 100,000
//! entries on the README's machine).
//!
//! The graph is stored in our own portable form, [`SavedGraph`]: every
//! point's level and its neighbour ids per layer, plus the entry point, as
//! little-endian postcard inside the checksummed file of [`crate::persist`].
//!
//! hnsw_rs offers no way to build an index from neighbour lists other than
//! its own reloader (`hnswio`), and that reader is not fit for untrusted bytes:
//! it `unwrap`s and `assert!`s on malformed input, calls `process::exit`, and
//! slices vectors by a dimension it never checks against the bytes present. So
//! the bytes it reads are never the file's: [`restore`] first validates the
//! saved graph completely (every point on exactly one level, links naming
//! existing points, lists within a bound, the entry point on the top layer,
//! finite vectors of the KB's dimension), then writes hnswio's dump format
//! itself from the validated values into a private temporary directory
//! (`tempfile`, under `TMPDIR`) and lets hnswio read that back. Whatever
//! reaches hnswio is well formed by construction. What remains of hnswio's
//! hazards: it exits the process if reading the file we have just written
//! fails with an I/O error.
//!
//! Saving needs hnsw_rs's own dump once too: the entry point is private to
//! hnsw_rs and appears only there. So saving and loading a KB each need a
//! writable temporary directory with room for about twice the KB file.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use hnsw_rs::prelude::{AnnT, DistL2, Distance, Hnsw, HnswIo};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::IntentError;

/// hnsw_rs's number of layers (`NB_LAYER_MAX`, not exported): every index we
/// create asks for this many, and its dump format writes them all.
pub(crate) const LAYERS: usize = 16;

/// The links-per-node bound we allow: hnsw_rs's dump stores it as a `u8`.
pub(crate) const MAX_CONNECTIONS: usize = 255;

/// The index type of the knowledge base.
pub(crate) type Index<'a> = Hnsw<'a, f32, DistL2>;

self_cell::self_cell!(
    /// An hnsw_rs index together with the reloader it borrows from: hnsw_rs
    /// ties a reloaded graph's lifetime to its `HnswIo` (for memory-mapped
    /// data, which we do not use), so the two live and drop together.
    pub(crate) struct IndexCell {
        owner: HnswIo,
        #[not_covariant]
        dependent: Index,
    }
);

impl IndexCell {
    /// A new, empty index (its owner is an unused, empty reloader).
    pub(crate) fn empty(
        max_connections: usize,
        capacity: usize,
        ef_construction: usize,
    ) -> IndexCell {
        IndexCell::new(HnswIo::default(), |_| {
            Hnsw::new(
                max_connections,
                capacity,
                LAYERS,
                ef_construction,
                DistL2 {},
            )
        })
    }

    /// Run `f` on the index.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&Index<'_>) -> R) -> R {
        self.with_dependent(|_, index| f(index))
    }
}

/// The HNSW graph in portable form. Point ids are the KB's point indices
/// (hnsw_rs's `DataId`s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedGraph {
    /// Links per node the graph was built with (hnsw_rs's `max_nb_connection`).
    max_connections: u16,
    /// Candidate list size it was built with.
    ef_construction: u32,
    /// Factor on hnsw_rs's default level-sampling scale `1 / ln M` (1 unless
    /// changed). hnsw_rs's own dump writes the scale itself where its reader
    /// expects this factor; we store the factor.
    level_scale: f64,
    /// `layers[l][r]` is the point hnsw_rs keeps at level `l`, rank `r`.
    layers: Vec<Vec<u32>>,
    /// For every point, by id, its neighbour ids at layers `0..` (at most
    /// [`LAYERS`], trailing empty layers dropped).
    neighbours: Vec<Vec<Vec<u32>>>,
    /// The point every search starts from.
    entry: u32,
}

fn encode_err(what: impl std::fmt::Display) -> IntentError {
    IntentError::Encode(format!("saving the knowledge-base graph: {what}"))
}

fn decode_err(what: impl std::fmt::Display) -> IntentError {
    IntentError::Decode(format!("knowledge-base graph: {what}"))
}

fn temp_dir() -> Result<tempfile::TempDir, IntentError> {
    tempfile::Builder::new()
        .prefix("cs-intent-kb-")
        .tempdir()
        .map_err(|source| IntentError::Io {
            action: "create a temporary directory in",
            path: std::env::temp_dir(),
            source,
        })
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IntentError + use<> {
    let path = path.to_path_buf();
    move |source| IntentError::Io {
        action,
        path,
        source,
    }
}

/// Capture the graph of `index`, whose points are ids `0..points`. `None`
/// for an empty index.
pub(crate) fn capture(index: &Index<'_>, points: usize) -> Result<Option<SavedGraph>, IntentError> {
    if index.get_nb_point() == 0 {
        return Ok(None);
    }
    if index.get_nb_point() != points {
        return Err(encode_err(format!(
            "the index holds {} points, the KB {points}",
            index.get_nb_point()
        )));
    }
    let indexation = index.get_point_indexation();
    let mut layers: Vec<Vec<u32>> = Vec::new();
    let mut neighbours: Vec<Option<Vec<Vec<u32>>>> = vec![None; points];
    for level in 0..index.get_max_level().min(LAYERS) {
        let mut layer = Vec::new();
        for (rank, point) in indexation.get_layer_iterator(level).enumerate() {
            let id = point.get_origin_id();
            let p_id = point.get_point_id();
            if usize::from(p_id.0) != level || p_id.1 as usize != rank || id >= points {
                return Err(encode_err(format!("point {id} is out of place")));
            }
            let mut lists: Vec<Vec<u32>> = point
                .get_neighborhood_id()
                .into_iter()
                .map(|l| l.iter().map(|n| n.d_id as u32).collect())
                .collect();
            // Layers above the point's own level may hold the points its
            // insertion passed through (hnsw_rs records them; search never
            // reads them). Kept, so the restored graph is the same graph.
            while lists.last().is_some_and(Vec::is_empty) {
                lists.pop();
            }
            neighbours[id] = Some(lists);
            layer.push(id as u32);
        }
        layers.push(layer);
    }
    while layers.last().is_some_and(Vec::is_empty) {
        layers.pop();
    }
    let neighbours = neighbours
        .into_iter()
        .enumerate()
        .map(|(id, n)| n.ok_or_else(|| encode_err(format!("point {id} is in no layer"))))
        .collect::<Result<Vec<_>, _>>()?;
    let entry = entry_point(index)?;
    let top = layers.len().saturating_sub(1);
    if !layers[top].contains(&entry) {
        return Err(encode_err("the entry point is not on the top layer"));
    }
    Ok(Some(SavedGraph {
        max_connections: index.get_max_nb_connection().into(),
        ef_construction: index.get_ef_construction() as u32,
        level_scale: indexation.get_level_scale() * f64::from(index.get_max_nb_connection()).ln(),
        layers,
        neighbours,
        entry,
    }))
}

/// hnsw_rs keeps its entry point private and writes it only at the end of
/// its own dump (`origin id: usize, layer: u8, rank: i32`, native endian),
/// so dump the index and read it from there.
fn entry_point(index: &Index<'_>) -> Result<u32, IntentError> {
    let dir = temp_dir()?;
    let base = index
        .file_dump(dir.path(), "kb")
        .map_err(|e| encode_err(format!("hnsw_rs dump failed: {e}")))?;
    let path = dir.path().join(format!("{base}.hnsw.graph"));
    let mut file = File::open(&path).map_err(io_err("read", &path))?;
    const TAIL: usize = std::mem::size_of::<usize>() + 1 + 4;
    let mut tail = [0u8; TAIL];
    file.seek(SeekFrom::End(-(TAIL as i64)))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(io_err("read", &path))?;
    let mut id = [0u8; std::mem::size_of::<usize>()];
    let n = id.len();
    id.copy_from_slice(&tail[..n]);
    u32::try_from(usize::from_ne_bytes(id)).map_err(|_| encode_err("entry point id overflows"))
}

/// Validate a saved graph over `vectors` (point `i` is `vectors[i]`, each of
/// `dim` finite values) and rebuild the hnsw_rs index from it.
pub(crate) fn restore(
    graph: &SavedGraph,
    vectors: &[&[f32]],
    dim: usize,
) -> Result<IndexCell, IntentError> {
    let n = vectors.len();
    let m = usize::from(graph.max_connections);
    if !(1..=MAX_CONNECTIONS).contains(&m) {
        return Err(decode_err(format!("{m} links per node")));
    }
    if !(graph.level_scale.is_finite() && graph.level_scale > 0.0 && graph.level_scale < 16.0) {
        return Err(decode_err("the level scale is out of range"));
    }
    if graph.layers.is_empty() || graph.layers.len() > LAYERS {
        return Err(decode_err(format!("{} layers", graph.layers.len())));
    }
    if graph.neighbours.len() != n {
        return Err(decode_err(format!(
            "{} neighbour lists for {n} points",
            graph.neighbours.len()
        )));
    }
    if let Some(i) = vectors
        .iter()
        .position(|v| v.len() != dim || v.iter().any(|x| !x.is_finite()))
    {
        return Err(decode_err(format!("point {i} is not {dim} finite values")));
    }
    // Each point sits on exactly one level; links name existing points. (A
    // link may reach a point of a lower level: the first points of a parallel
    // build are linked from the layers above them before higher points exist.)
    let mut level: Vec<Option<usize>> = vec![None; n];
    for (l, layer) in graph.layers.iter().enumerate() {
        for &id in layer {
            let slot = level
                .get_mut(id as usize)
                .ok_or_else(|| decode_err(format!("point id {id} out of range")))?;
            if slot.replace(l).is_some() {
                return Err(decode_err(format!("point {id} is on two levels")));
            }
        }
    }
    let level: Vec<usize> = level
        .into_iter()
        .enumerate()
        .map(|(id, l)| l.ok_or_else(|| decode_err(format!("point {id} is on no level"))))
        .collect::<Result<_, _>>()?;
    for (id, lists) in graph.neighbours.iter().enumerate() {
        if lists.len() > LAYERS {
            return Err(decode_err(format!(
                "point {id} has links on {} layers",
                lists.len()
            )));
        }
        for list in lists {
            // hnsw_rs keeps at most 2M links on layer 0 and M above; twice that is corrupt.
            if list.len() > 4 * m {
                return Err(decode_err(format!("point {id} has {} links", list.len())));
            }
            if let Some(nb) = list.iter().find(|&&nb| nb as usize >= n) {
                return Err(decode_err(format!(
                    "point {id} links to a missing point {nb}"
                )));
            }
        }
    }
    let top = graph.layers.len() - 1;
    if level.get(graph.entry as usize) != Some(&top) {
        return Err(decode_err("the entry point is not on the top layer"));
    }
    let dir = temp_dir()?;
    write_dump(dir.path(), graph, vectors, dim)?;
    let io = HnswIo::new(dir.path(), "kb");
    let mut cell = IndexCell::try_new(io, |io| io.load_hnsw_with_dist(DistL2 {}))
        .map_err(|e| decode_err(format!("hnsw_rs reload failed: {e}")))?;
    // Match a freshly built index for later inserts (the reloader turns this on).
    cell.with_dependent_mut(|_, index| index.set_extend_candidates(false));
    Ok(cell)
}

// hnswio's magic numbers (private in hnsw_rs 0.3): a description with a
// level scale, a layer, a point, a data record.
const MAGIC_DESCRIPTION: u32 = 0x002a_6779;
const MAGIC_LAYER: u32 = 0x000a_676f;
const MAGIC_POINT: u32 = 0x000a_678f;
const MAGIC_DATA: u32 = 0xa67f_0000;

fn put_usize(buf: &mut Vec<u8>, v: usize) {
    buf.extend_from_slice(&v.to_ne_bytes());
}

/// One point's records in hnswio's graph file and data file.
fn point_records(
    graph: &SavedGraph,
    vectors: &[&[f32]],
    place: &[(u8, i32)],
    id: usize,
    graph_out: &mut Vec<u8>,
    data_out: &mut Vec<u8>,
) {
    let (level, rank) = place[id];
    graph_out.extend_from_slice(&MAGIC_POINT.to_ne_bytes());
    put_usize(graph_out, id);
    graph_out.push(level);
    graph_out.extend_from_slice(&rank.to_ne_bytes());
    for layer in 0..LAYERS {
        let list = graph.neighbours[id]
            .get(layer)
            .map_or(&[][..], Vec::as_slice);
        put_usize(graph_out, list.len());
        for &nb in list {
            let (nl, nr) = place[nb as usize];
            put_usize(graph_out, nb as usize);
            graph_out.push(nl);
            graph_out.extend_from_slice(&nr.to_ne_bytes());
            // The same distance function hnsw_rs used when it linked them.
            let dist = DistL2 {}.eval(vectors[id], vectors[nb as usize]);
            graph_out.extend_from_slice(&dist.to_ne_bytes());
        }
    }
    data_out.extend_from_slice(&MAGIC_DATA.to_ne_bytes());
    data_out.extend_from_slice(&(id as u64).to_ne_bytes());
    data_out.extend_from_slice(&(std::mem::size_of_val(vectors[id]) as u64).to_ne_bytes());
    for x in vectors[id] {
        data_out.extend_from_slice(&x.to_ne_bytes());
    }
}

/// Write `kb.hnsw.graph` and `kb.hnsw.data` in hnswio's "full" dump format
/// (native endian, `usize` counts), from an already validated graph. The
/// points' records (with the link distances to compute) are encoded in
/// parallel chunks and written in order.
fn write_dump(
    dir: &Path,
    graph: &SavedGraph,
    vectors: &[&[f32]],
    dim: usize,
) -> Result<(), IntentError> {
    let graph_path = dir.join("kb.hnsw.graph");
    let data_path = dir.join("kb.hnsw.data");
    let create = |path: &Path| {
        File::create(path)
            .map(|f| BufWriter::with_capacity(1 << 20, f))
            .map_err(io_err("write", path))
    };
    let (mut g, mut d) = (create(&graph_path)?, create(&data_path)?);
    // The rank of every point on its level: neighbours are named by (level, rank).
    let mut place = vec![(0u8, 0i32); vectors.len()];
    for (l, layer) in graph.layers.iter().enumerate() {
        for (r, &id) in layer.iter().enumerate() {
            place[id as usize] = (l as u8, r as i32);
        }
    }
    let mut head: Vec<u8> = Vec::new();
    head.extend_from_slice(&MAGIC_DESCRIPTION.to_ne_bytes());
    head.push(1); // full mode: neighbours carry their (level, rank)
    head.push(graph.max_connections as u8);
    head.extend_from_slice(&graph.level_scale.to_ne_bytes());
    head.push(LAYERS as u8);
    put_usize(&mut head, graph.ef_construction as usize);
    put_usize(&mut head, vectors.len());
    put_usize(&mut head, dim);
    for name in [
        std::any::type_name::<DistL2>(),
        std::any::type_name::<f32>(),
    ] {
        put_usize(&mut head, name.len());
        head.extend_from_slice(name.as_bytes());
    }
    // Then the layers, every one of the LAYERS (hnsw_rs writes the empty ones too).
    head.push(LAYERS as u8);
    let mut data_head: Vec<u8> = Vec::new();
    data_head.extend_from_slice(&MAGIC_DATA.to_ne_bytes());
    put_usize(&mut data_head, dim);
    let write_g =
        |g: &mut BufWriter<File>, b: &[u8]| g.write_all(b).map_err(io_err("write", &graph_path));
    let write_d =
        |d: &mut BufWriter<File>, b: &[u8]| d.write_all(b).map_err(io_err("write", &data_path));
    write_g(&mut g, &head)?;
    write_d(&mut d, &data_head)?;
    let empty = Vec::new();
    for l in 0..LAYERS {
        let layer = graph.layers.get(l).unwrap_or(&empty);
        let mut layer_head = MAGIC_LAYER.to_ne_bytes().to_vec();
        put_usize(&mut layer_head, layer.len());
        write_g(&mut g, &layer_head)?;
        let chunks: Vec<(Vec<u8>, Vec<u8>)> = layer
            .par_chunks(4096)
            .map(|ids| {
                let (mut go, mut dout) = (Vec::new(), Vec::new());
                for &id in ids {
                    point_records(graph, vectors, &place, id as usize, &mut go, &mut dout);
                }
                (go, dout)
            })
            .collect();
        for (go, dout) in chunks {
            write_g(&mut g, &go)?;
            write_d(&mut d, &dout)?;
        }
    }
    let (el, er) = place[graph.entry as usize];
    let mut tail = Vec::new();
    put_usize(&mut tail, graph.entry as usize);
    tail.push(el);
    tail.extend_from_slice(&er.to_ne_bytes());
    write_g(&mut g, &tail)?;
    g.flush().map_err(io_err("write", &graph_path))?;
    d.flush().map_err(io_err("write", &data_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real graph over a few hundred points, with its vectors.
    fn sample() -> (SavedGraph, Vec<Vec<f32>>) {
        let vectors: Vec<Vec<f32>> = (0..300)
            .map(|i| {
                let mut v: Vec<f32> = (0..16).map(|d| ((i * 31 + d * 7) % 17) as f32).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect();
        let cell = IndexCell::empty(8, 300, 32);
        let batch: Vec<(&[f32], usize)> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_slice(), i))
            .collect();
        cell.with(|index| index.parallel_insert_slice(&batch));
        let graph = cell
            .with(|index| capture(index, vectors.len()))
            .unwrap()
            .unwrap();
        (graph, vectors)
    }

    fn restore_with(graph: &SavedGraph, vectors: &[Vec<f32>]) -> Result<IndexCell, IntentError> {
        let refs: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        restore(graph, &refs, 16)
    }

    #[test]
    fn a_sound_graph_restores_and_searches_alike() {
        let (graph, vectors) = sample();
        let cell = restore_with(&graph, &vectors).unwrap();
        let again = cell
            .with(|index| capture(index, vectors.len()))
            .unwrap()
            .unwrap();
        assert_eq!(again, graph);
    }

    #[test]
    fn inconsistent_graphs_are_decode_errors_not_panics() {
        let (graph, vectors) = sample();
        let mut cases: Vec<(&str, SavedGraph, Vec<Vec<f32>>)> = Vec::new();
        let mut g = graph.clone();
        g.neighbours[5][0].push(10_000);
        cases.push(("link out of range", g, vectors.clone()));
        let mut g = graph.clone();
        let first = g.layers[0][0];
        g.layers[0].push(first);
        cases.push(("point on two levels", g, vectors.clone()));
        let mut g = graph.clone();
        g.layers[0].pop();
        cases.push(("point on no level", g, vectors.clone()));
        let mut g = graph.clone();
        g.entry = g.layers[0][0];
        cases.push(("entry below the top", g, vectors.clone()));
        let mut g = graph.clone();
        g.entry = 1 << 30;
        cases.push(("entry out of range", g, vectors.clone()));
        let mut g = graph.clone();
        g.neighbours[7] = vec![Vec::new(); LAYERS + 1];
        cases.push(("too many layers", g, vectors.clone()));
        let mut g = graph.clone();
        g.neighbours[7][0] = vec![1; 1000];
        cases.push(("too many links", g, vectors.clone()));
        let mut g = graph.clone();
        g.max_connections = 0;
        cases.push(("no links per node", g, vectors.clone()));
        let mut g = graph.clone();
        g.level_scale = f64::NAN;
        cases.push(("level scale", g, vectors.clone()));
        let mut g = graph.clone();
        g.neighbours.pop();
        cases.push(("lists for fewer points", g, vectors.clone()));
        let mut v = vectors.clone();
        v[3][2] = f32::NAN;
        cases.push(("a NaN coordinate", graph.clone(), v));
        let mut v = vectors.clone();
        v[3].pop();
        cases.push(("a short vector", graph.clone(), v));
        for (what, g, v) in cases {
            assert!(
                matches!(restore_with(&g, &v), Err(IntentError::Decode(_))),
                "{what}"
            );
        }
    }
}
