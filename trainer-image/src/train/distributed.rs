//! Data parallelism: every rank runs the same model on its own slice of each
//! global batch, and the ranks average their gradients before every update.
//!
//! The [`Collective`] trait is all the training loop needs. [`Single`] is the
//! one-process case; [`TcpCollective`] connects the ranks of `torchrun`-style
//! environment variables (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) in a
//! star around rank 0, which reduces in rank order so every run is reproducible.
//! It is the CPU backend; on CUDA, [`from_env`] uses the TCP group only to set up
//! NCCL ([`super::nccl`]), which then reduces on the GPUs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use llmops_contract::{MASTER_PORT, env};
use tch::{Device, Kind, Tensor};

/// Why ranks could not talk to each other.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("invalid data-parallel environment: {0}")]
    Environment(String),
    #[error("cannot reach rank 0 at {addr} within {secs}s: {source}")]
    Connect {
        addr: String,
        secs: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("data-parallel connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("ranks disagree: {0}")]
    Mismatch(String),
    #[error(
        "data-parallel group incomplete: rank(s) {missing} did not connect to rank 0 within {secs}s"
    )]
    Missing { missing: String, secs: f64 },
    #[error("NCCL: {0}")]
    Nccl(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// The operations data-parallel training needs.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces every tensor, on every rank, with its element-wise mean over
    /// all ranks. All ranks pass tensors of the same shapes in the same order.
    fn all_reduce_mean(&mut self, tensors: &[Tensor]) -> Result<(), CollectiveError>;
    /// Replaces every tensor on every rank with rank 0's.
    fn broadcast(&mut self, tensors: &[Tensor]) -> Result<(), CollectiveError>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError>;
    /// The element-wise mean over ranks of `flat`, a 1-D fp32 tensor of
    /// `world_size × s` values (see [`Shards`]), returned only in part: this
    /// rank's shard, the `s` values from `rank × s`, on `flat`'s device.
    fn reduce_scatter_mean(&mut self, flat: &Tensor) -> Result<Tensor, CollectiveError>;
    /// Every rank's `shard` (1-D fp32, the same length `s` on every rank)
    /// concatenated in rank order: `world_size × s` values on every rank.
    fn all_gather(&mut self, shard: &Tensor) -> Result<Tensor, CollectiveError>;
}

/// How `len` flattened values split over `world` ranks for the sharded
/// collectives and the ZeRO optimizer: contiguous shards of `ceil(len / world)`
/// values in rank order, the buffer padded with zeros to `world` whole shards
/// (NCCL's reduce-scatter and all-gather need equal parts). Only the last
/// shards hold padding, at most `world - 1` values in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shards {
    /// Values before padding.
    pub len: usize,
    pub world: usize,
    /// Values per shard, padding included.
    pub shard: usize,
}

impl Shards {
    pub fn new(len: usize, world: usize) -> Self {
        let world = world.max(1);
        Self {
            len,
            world,
            shard: len.div_ceil(world),
        }
    }

    /// The padded length, `world × shard`.
    pub fn padded(&self) -> usize {
        self.world * self.shard
    }

    /// Where `rank`'s shard starts in the padded buffer.
    pub fn start(&self, rank: usize) -> usize {
        rank * self.shard
    }

    /// The real (unpadded) values of `rank`'s shard, as a range of the
    /// unpadded buffer; empty when the shard is all padding.
    pub fn real(&self, rank: usize) -> std::ops::Range<usize> {
        let start = self.start(rank).min(self.len);
        start..(start + self.shard).min(self.len)
    }

    /// `flat` (1-D, `len` values) with zeros appended up to [`Shards::padded`].
    pub fn pad(&self, flat: &Tensor) -> Result<Tensor, tch::TchError> {
        let missing = (self.padded() - self.len) as i64;
        if missing == 0 {
            return Ok(flat.shallow_clone());
        }
        let zeros = Tensor::f_zeros([missing], (flat.kind(), flat.device()))?;
        Tensor::f_cat(&[flat.shallow_clone(), zeros], 0)
    }
}

/// One process: every operation is the identity.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_mean(&mut self, _: &[Tensor]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast(&mut self, _: &[Tensor]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn reduce_scatter_mean(&mut self, flat: &Tensor) -> Result<Tensor, CollectiveError> {
        Ok(flat.shallow_clone())
    }
    fn all_gather(&mut self, shard: &Tensor) -> Result<Tensor, CollectiveError> {
        Ok(shard.shallow_clone())
    }
}

/// Picks the backend: `LLMOPS_COLLECTIVE` (`nccl` or `tcp`) when set, else NCCL
/// on CUDA and TCP on the CPU.
fn use_nccl(device: Device) -> Result<bool, CollectiveError> {
    match std::env::var(env::COLLECTIVE).ok().as_deref() {
        None | Some("") => Ok(device.is_cuda()),
        Some("tcp") => Ok(false),
        Some("nccl") => Ok(true),
        Some(other) => Err(CollectiveError::Environment(format!(
            "{}={other} is not a backend (nccl or tcp)",
            env::COLLECTIVE
        ))),
    }
}

/// The group described by the environment for a rank on `device`, defaulting to
/// a single process.
pub fn from_env(device: Device) -> Result<Box<dyn Collective>, CollectiveError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let parse = |name: &str, value: String| {
        value
            .parse::<usize>()
            .map_err(|_| CollectiveError::Environment(format!("{name}={value} is not a number")))
    };
    let world = match var(env::WORLD_SIZE) {
        Some(v) => parse(env::WORLD_SIZE, v)?,
        None => 1,
    };
    if world <= 1 {
        return Ok(Box::new(Single));
    }
    let rank = parse(
        env::RANK,
        var(env::RANK)
            .ok_or_else(|| CollectiveError::Environment("WORLD_SIZE set without RANK".into()))?,
    )?;
    let addr = var(env::MASTER_ADDR).unwrap_or_else(|| "127.0.0.1".into());
    let port = var(env::MASTER_PORT).unwrap_or_else(|| MASTER_PORT.to_string());
    let timeout = var(env::DIST_TIMEOUT_SECONDS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let tcp = TcpCollective::connect(
        rank,
        world,
        &format!("{addr}:{port}"),
        Duration::from_secs(timeout),
    )?;
    if use_nccl(device)? {
        return Ok(Box::new(super::nccl::NcclCollective::join(tcp, device)?));
    }
    Ok(Box::new(tcp))
}

/// Ranks connected to rank 0 over TCP.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// On rank 0: the streams of ranks 1.., in rank order. Elsewhere: rank 0.
    peers: Vec<TcpStream>,
    buf: Vec<u8>,
}

impl TcpCollective {
    /// Rank 0 listens on `addr` and waits for the others; the others connect,
    /// retrying (pods start in any order). Either gives up after `timeout`.
    pub fn connect(
        rank: usize,
        world: usize,
        addr: &str,
        timeout: Duration,
    ) -> Result<Self, CollectiveError> {
        if rank >= world {
            return Err(CollectiveError::Environment(format!(
                "RANK {rank} is not below WORLD_SIZE {world}"
            )));
        }
        let peers = if rank == 0 {
            Self::accept_ranks(world, addr, timeout)?
        } else {
            vec![Self::connect_to_rank0(rank, world, addr, timeout)?]
        };
        Ok(Self {
            rank,
            world,
            peers,
            buf: Vec::new(),
        })
    }

    /// Rank 0's side: one connection from each other rank, ordered by rank.
    fn accept_ranks(
        world: usize,
        addr: &str,
        timeout: Duration,
    ) -> Result<Vec<TcpStream>, CollectiveError> {
        let default_port = MASTER_PORT.to_string();
        let port = addr.rsplit(':').next().unwrap_or(&default_port);
        let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
        // Polled, so that a rank that never comes is an error, not a hang.
        listener.set_nonblocking(true)?;
        let started = Instant::now();
        let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        for _ in 1..world {
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if started.elapsed() >= timeout {
                            let missing: Vec<String> = (1..world)
                                .filter(|r| slots[r - 1].is_none())
                                .map(|r| r.to_string())
                                .collect();
                            return Err(CollectiveError::Missing {
                                missing: missing.join(", "),
                                secs: timeout.as_secs_f64(),
                            });
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            stream.set_nonblocking(false)?;
            stream.set_nodelay(true)?;
            let mut hello = [0u8; 8];
            stream.read_exact(&mut hello)?;
            let (peer, peer_world) = (
                u32::from_le_bytes(hello[..4].try_into().unwrap_or_default()) as usize,
                u32::from_le_bytes(hello[4..].try_into().unwrap_or_default()) as usize,
            );
            if peer_world != world || peer == 0 || peer >= world || slots[peer - 1].is_some() {
                return Err(CollectiveError::Mismatch(format!(
                    "rank 0 of {world} got a connection from rank {peer} of {peer_world}"
                )));
            }
            slots[peer - 1] = Some(stream);
        }
        Ok(slots.into_iter().flatten().collect())
    }

    /// Another rank's side: connect to rank 0 and say who we are.
    fn connect_to_rank0(
        rank: usize,
        world: usize,
        addr: &str,
        timeout: Duration,
    ) -> Result<TcpStream, CollectiveError> {
        let started = Instant::now();
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) if started.elapsed() >= timeout => {
                    return Err(CollectiveError::Connect {
                        addr: addr.into(),
                        secs: timeout.as_secs(),
                        source: e,
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        stream.set_nodelay(true)?;
        let mut hello = (rank as u32).to_le_bytes().to_vec();
        hello.extend((world as u32).to_le_bytes());
        stream.write_all(&hello)?;
        Ok(stream)
    }

    fn send(stream: &mut TcpStream, data: &[f32], buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.clear();
        buf.extend((data.len() as u64).to_le_bytes());
        for x in data {
            buf.extend(x.to_le_bytes());
        }
        stream.write_all(buf)
    }

    fn recv(
        stream: &mut TcpStream,
        into: &mut [f32],
        buf: &mut Vec<u8>,
        mut combine: impl FnMut(&mut f32, f32),
    ) -> Result<(), CollectiveError> {
        let mut len = [0u8; 8];
        stream.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len) as usize;
        if len != into.len() {
            return Err(CollectiveError::Mismatch(format!(
                "a peer sent {len} values where {} were expected (different models or settings?)",
                into.len()
            )));
        }
        buf.resize(len * 4, 0);
        stream.read_exact(buf)?;
        for (slot, bytes) in into.iter_mut().zip(buf.chunks_exact(4)) {
            combine(
                slot,
                f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            );
        }
        Ok(())
    }
}

impl TcpCollective {
    /// Replaces `data` on every rank with the element-wise mean over all ranks,
    /// summed in rank order.
    pub fn all_reduce_mean_host(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        if self.rank == 0 {
            for peer in &mut self.peers {
                Self::recv(peer, data, &mut self.buf, |acc, x| *acc += x)?;
            }
            let scale = 1.0 / self.world as f32;
            data.iter_mut().for_each(|x| *x *= scale);
            for peer in &mut self.peers {
                Self::send(peer, data, &mut self.buf)?;
            }
        } else {
            Self::send(&mut self.peers[0], data, &mut self.buf)?;
            Self::recv(&mut self.peers[0], data, &mut self.buf, |slot, x| *slot = x)?;
        }
        Ok(())
    }

    /// Replaces `data` on every rank with rank 0's.
    pub fn broadcast_host(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        if self.rank == 0 {
            for peer in &mut self.peers {
                Self::send(peer, data, &mut self.buf)?;
            }
        } else {
            Self::recv(&mut self.peers[0], data, &mut self.buf, |slot, x| *slot = x)?;
        }
        Ok(())
    }

    /// The mean over ranks of `data` (`world × s` values on every rank), of
    /// which this rank gets its `s` values from `rank × s`.
    ///
    /// Through rank 0, which sums in rank order exactly as
    /// [`TcpCollective::all_reduce_mean_host`] does (so the shards equal the
    /// slices of an all-reduce bit for bit): every other rank sends all `n`
    /// values and receives `n / world`; rank 0 receives `(world - 1) × n` and
    /// sends `(world - 1) × n / world`. Against the all-reduce, what the ranks
    /// receive shrinks by a factor `world`; what rank 0 receives does not.
    pub fn reduce_scatter_mean_host(&mut self, data: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        let shard = self.shard_len(data.len())?;
        if self.rank == 0 {
            let mut sum = data.to_vec();
            for peer in &mut self.peers {
                Self::recv(peer, &mut sum, &mut self.buf, |acc, x| *acc += x)?;
            }
            let scale = 1.0 / self.world as f32;
            sum.iter_mut().for_each(|x| *x *= scale);
            for (i, peer) in self.peers.iter_mut().enumerate() {
                let r = i + 1;
                Self::send(peer, &sum[r * shard..(r + 1) * shard], &mut self.buf)?;
            }
            sum.truncate(shard);
            Ok(sum)
        } else {
            Self::send(&mut self.peers[0], data, &mut self.buf)?;
            let mut mine = vec![0f32; shard];
            Self::recv(&mut self.peers[0], &mut mine, &mut self.buf, |slot, x| {
                *slot = x
            })?;
            Ok(mine)
        }
    }

    /// Every rank's `shard` in rank order, on every rank.
    ///
    /// Through rank 0: every other rank sends `s` values and receives
    /// `world × s`; rank 0 receives `(world - 1) × s` and sends
    /// `(world - 1) × world × s`.
    pub fn all_gather_host(&mut self, shard: &[f32]) -> Result<Vec<f32>, CollectiveError> {
        let s = shard.len();
        let mut all = vec![0f32; self.world * s];
        if self.rank == 0 {
            all[..s].copy_from_slice(shard);
            for (i, peer) in self.peers.iter_mut().enumerate() {
                let r = i + 1;
                Self::recv(
                    peer,
                    &mut all[r * s..(r + 1) * s],
                    &mut self.buf,
                    |slot, x| *slot = x,
                )?;
            }
            for peer in &mut self.peers {
                Self::send(peer, &all, &mut self.buf)?;
            }
        } else {
            Self::send(&mut self.peers[0], shard, &mut self.buf)?;
            Self::recv(&mut self.peers[0], &mut all, &mut self.buf, |slot, x| {
                *slot = x
            })?;
        }
        Ok(all)
    }

    /// The shard length of a buffer of `len` values, which must split evenly.
    fn shard_len(&self, len: usize) -> Result<usize, CollectiveError> {
        if !len.is_multiple_of(self.world) {
            return Err(CollectiveError::Mismatch(format!(
                "a reduce-scatter of {len} values does not split over {} ranks (pad to whole shards)",
                self.world
            )));
        }
        Ok(len / self.world)
    }

    /// Replaces `data` on every rank with rank 0's bytes (e.g. NCCL's unique id).
    pub fn broadcast_bytes(&mut self, data: &mut [u8]) -> Result<(), CollectiveError> {
        let len = (data.len() as u64).to_le_bytes();
        if self.rank == 0 {
            for peer in &mut self.peers {
                peer.write_all(&len)?;
                peer.write_all(data)?;
            }
        } else {
            let mut got = [0u8; 8];
            self.peers[0].read_exact(&mut got)?;
            if got != len {
                return Err(CollectiveError::Mismatch(format!(
                    "rank 0 sent {} bytes where {} were expected",
                    u64::from_le_bytes(got),
                    data.len()
                )));
            }
            self.peers[0].read_exact(data)?;
        }
        Ok(())
    }
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_mean(&mut self, tensors: &[Tensor]) -> Result<(), CollectiveError> {
        let mut flat = flatten(tensors)?;
        self.all_reduce_mean_host(&mut flat)?;
        unflatten(&flat, tensors)
    }

    fn broadcast(&mut self, tensors: &[Tensor]) -> Result<(), CollectiveError> {
        let mut flat = flatten(tensors)?;
        self.broadcast_host(&mut flat)?;
        unflatten(&flat, tensors)
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.all_reduce_mean_host(&mut [0.0])
    }

    fn reduce_scatter_mean(&mut self, flat: &Tensor) -> Result<Tensor, CollectiveError> {
        let data = flatten(std::slice::from_ref(flat))?;
        let mine = self.reduce_scatter_mean_host(&data)?;
        Ok(Tensor::f_from_slice(&mine)?.f_to_device(flat.device())?)
    }

    fn all_gather(&mut self, shard: &Tensor) -> Result<Tensor, CollectiveError> {
        let data = flatten(std::slice::from_ref(shard))?;
        let all = self.all_gather_host(&data)?;
        Ok(Tensor::f_from_slice(&all)?.f_to_device(shard.device())?)
    }
}

/// Copies `tensors` (any device, any float kind) into one host fp32 vector.
pub fn flatten(tensors: &[Tensor]) -> Result<Vec<f32>, CollectiveError> {
    let flat: Vec<Tensor> = tensors
        .iter()
        .map(|t| {
            t.f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_reshape([-1])
        })
        .collect::<Result<_, _>>()?;
    let flat = Tensor::f_cat(&flat, 0)?;
    let n = flat.numel();
    let mut out = vec![0f32; n];
    flat.f_copy_data(&mut out, n)?;
    Ok(out)
}

/// Writes `data` back into `tensors` (the inverse of [`flatten`]).
pub fn unflatten(data: &[f32], tensors: &[Tensor]) -> Result<(), CollectiveError> {
    let mut offset = 0;
    for t in tensors {
        let n = t.numel();
        let part = Tensor::f_from_slice(&data[offset..offset + n])?.f_reshape(t.size())?;
        tch::no_grad(|| t.shallow_clone().f_copy_(&part))?;
        offset += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_ranks_average_and_broadcast() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = format!("127.0.0.1:{port}");
        let handles: Vec<_> = (0..3)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut c =
                        TcpCollective::connect(rank, 3, &addr, Duration::from_secs(20)).unwrap();
                    let mut data = vec![rank as f32, 10.0 * rank as f32];
                    c.all_reduce_mean_host(&mut data).unwrap();
                    let mut b = vec![rank as f32 + 5.0];
                    c.broadcast_host(&mut b).unwrap();
                    let t = Tensor::from_slice(&[rank as f32 * 3.0]);
                    c.all_reduce_mean(&[t.shallow_clone()]).unwrap();
                    assert_eq!(t.double_value(&[0]), 3.0);
                    let mut bytes = [rank as u8; 4];
                    c.broadcast_bytes(&mut bytes).unwrap();
                    assert_eq!(bytes, [0; 4]);
                    c.barrier().unwrap();
                    (data, b)
                })
            })
            .collect();
        for h in handles {
            let (data, b) = h.join().unwrap();
            assert_eq!(data, vec![1.0, 10.0]);
            assert_eq!(b, vec![5.0]);
        }
    }

    /// Reduce-scatter and all-gather over 2 and 3 ranks: each rank's shard is
    /// the mean of its slice, bit for bit the all-reduce's, and gathering the
    /// shards gives the whole buffer back on every rank.
    #[test]
    fn tcp_ranks_reduce_scatter_and_all_gather() {
        for world in [2usize, 3] {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            // 7 values: 2 ranks take 4 + 3 (one padding value), 3 ranks 3 + 3 + 1.
            let values = |rank: usize| -> Vec<f32> {
                (0..7).map(|i| 0.1 * i as f32 + rank as f32 * 1.7).collect()
            };
            let shards = Shards::new(7, world);
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let addr = addr.clone();
                    std::thread::spawn(move || {
                        let mut c =
                            TcpCollective::connect(rank, world, &addr, Duration::from_secs(20))
                                .unwrap();
                        let flat = shards.pad(&Tensor::from_slice(&values(rank))).unwrap();
                        let mine = c.reduce_scatter_mean(&flat).unwrap();
                        let mut reduced = values(rank);
                        c.all_reduce_mean_host(&mut reduced).unwrap();
                        let gathered = c.all_gather(&mine).unwrap();
                        let odd =
                            c.reduce_scatter_mean(&Tensor::zeros([5], (Kind::Float, Device::Cpu)));
                        (
                            rank,
                            flatten(&[mine]).unwrap(),
                            reduced,
                            flatten(&[gathered]).unwrap(),
                            odd.is_err(),
                        )
                    })
                })
                .collect();
            for h in handles {
                let (rank, mine, reduced, gathered, odd_refused) = h.join().unwrap();
                assert_eq!(mine.len(), shards.shard);
                let real = shards.real(rank);
                assert_eq!(
                    &mine[..real.len()],
                    &reduced[real.clone()],
                    "world {world} rank {rank}"
                );
                assert!(
                    mine[real.len()..].iter().all(|&x| x == 0.0),
                    "padding stays zero"
                );
                assert_eq!(gathered.len(), shards.padded());
                assert_eq!(&gathered[..7], &reduced[..], "world {world} rank {rank}");
                assert!(odd_refused, "5 values do not split over {world} ranks");
            }
        }
    }

    #[test]
    fn shards_cover_the_buffer_once() {
        let s = Shards::new(10, 3);
        assert_eq!((s.shard, s.padded()), (4, 12));
        assert_eq!([s.real(0), s.real(1), s.real(2)], [0..4, 4..8, 8..10]);
        let s = Shards::new(2, 4);
        assert_eq!([s.real(2), s.real(3)], [2..2, 2..2]);
        let single = Shards::new(5, 1);
        assert_eq!((single.shard, single.real(0)), (5, 0..5));
    }

    #[test]
    fn a_missing_rank_is_an_error_not_a_hang() {
        let err = TcpCollective::connect(0, 3, "127.0.0.1:0", Duration::from_millis(300))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "data-parallel group incomplete: rank(s) 1, 2 did not connect to rank 0 within 0.3s"
        );
    }

    #[test]
    fn flatten_round_trips() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[5.0f32]);
        let mut flat = flatten(&[a.shallow_clone(), b.shallow_clone()]).unwrap();
        assert_eq!(flat, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        flat.iter_mut().for_each(|x| *x *= 2.0);
        unflatten(&flat, &[a.shallow_clone(), b.shallow_clone()]).unwrap();
        assert_eq!(a.double_value(&[1, 1]), 8.0);
        assert_eq!(b.double_value(&[0]), 10.0);
    }
}
