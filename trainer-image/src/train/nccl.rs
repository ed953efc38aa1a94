//! NCCL for data parallelism on CUDA: gradients are averaged GPU to GPU
//! (NVLink, PCIe or the network, whichever NCCL finds) instead of through host
//! memory as [`super::distributed::TcpCollective`] does.
//!
//! NCCL is not linked at build time. It is opened at run time from the CUDA
//! build of libtorch, which ships it (the `torch` wheel's `nvidia/nccl`) and has
//! already loaded it, so the trainer still builds and runs where there is no
//! CUDA at all. The ranks agree on NCCL's unique id over the TCP group, the same
//! rendezvous the CPU backend uses.

#![allow(
    unsafe_code,
    reason = "NCCL is opened with dlopen and called through C function pointers"
)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};

use tch::{Device, Kind, Tensor};

use super::distributed::{Collective, CollectiveError, TcpCollective};

/// Where to find NCCL when it is not the copy libtorch loaded.
pub const LIBRARY_ENV: &str = llmops_contract::env::NCCL_LIBRARY;
const DEFAULT_LIBRARY: &str = "libnccl.so.2";

/// `ncclUniqueId`: 128 opaque bytes, passed by value to `ncclCommInitRank`.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId([u8; 128]);

type Comm = *mut c_void;
type Stream = *mut c_void;
type NcclResult = c_int;

// Values of ncclDataType_t and ncclRedOp_t (nccl.h).
const NCCL_FLOAT32: c_int = 7;
const NCCL_AVG: c_int = 4;

/// The NCCL entry points the trainer uses, resolved from the loaded library.
struct Api {
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(Comm) -> NcclResult,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        Stream,
    ) -> NcclResult,
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        Stream,
    ) -> NcclResult,
    reduce_scatter: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        Stream,
    ) -> NcclResult,
    all_gather:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, Stream) -> NcclResult,
    error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    /// Selects the GPU NCCL binds to (CUDA runtime, loaded by libtorch_cuda).
    set_device: Option<unsafe extern "C" fn(c_int) -> c_int>,
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// Looks `name` up in `handle` and reinterprets it as the function type `F`.
///
/// # Safety
/// `F` must be the C signature of the symbol.
unsafe fn symbol<F: Copy>(handle: *mut c_void, name: &str) -> Result<F, CollectiveError> {
    let c_name = CString::new(name).map_err(|e| CollectiveError::Nccl(e.to_string()))?;
    // SAFETY: handle comes from dlopen (or is RTLD_DEFAULT); the name is NUL-terminated.
    let ptr = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
    if ptr.is_null() {
        return Err(CollectiveError::Nccl(format!(
            "the NCCL library has no {name}: {}",
            dl_error()
        )));
    }
    // SAFETY: the caller names the symbol's C signature; F is a function pointer.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
}

impl Api {
    /// Opens NCCL: `LLMOPS_NCCL_LIBRARY` when set, else `libnccl.so.2`, which
    /// resolves to the copy libtorch_cuda loaded.
    fn open() -> Result<Self, CollectiveError> {
        let path = std::env::var(LIBRARY_ENV).unwrap_or_else(|_| DEFAULT_LIBRARY.into());
        let c_path =
            CString::new(path.clone()).map_err(|e| CollectiveError::Nccl(e.to_string()))?;
        // SAFETY: a NUL-terminated path; the handle is never closed, as the
        // functions resolved from it live as long as the process.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(CollectiveError::Nccl(format!(
                "cannot load {path} ({}); it comes with the CUDA build of libtorch, or set {LIBRARY_ENV}",
                dl_error()
            )));
        }
        // SAFETY: each type below is the signature declared in nccl.h / cuda_runtime_api.h.
        unsafe {
            Ok(Api {
                get_version: symbol(handle, "ncclGetVersion")?,
                get_unique_id: symbol(handle, "ncclGetUniqueId")?,
                comm_init_rank: symbol(handle, "ncclCommInitRank")?,
                comm_destroy: symbol(handle, "ncclCommDestroy")?,
                all_reduce: symbol(handle, "ncclAllReduce")?,
                broadcast: symbol(handle, "ncclBroadcast")?,
                reduce_scatter: symbol(handle, "ncclReduceScatter")?,
                all_gather: symbol(handle, "ncclAllGather")?,
                error_string: symbol(handle, "ncclGetErrorString")?,
                set_device: symbol(libc::RTLD_DEFAULT, "cudaSetDevice").ok(),
            })
        }
    }

    fn check(&self, op: &str, result: NcclResult) -> Result<(), CollectiveError> {
        if result == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string.
        let text = unsafe {
            let s = (self.error_string)(result);
            if s.is_null() {
                format!("error {result}")
            } else {
                CStr::from_ptr(s).to_string_lossy().into_owned()
            }
        };
        Err(CollectiveError::Nccl(format!("{op} failed: {text}")))
    }

    /// NCCL's version as major.minor.patch.
    fn version(&self) -> Result<String, CollectiveError> {
        let mut code: c_int = 0;
        // SAFETY: writes one int.
        self.check("ncclGetVersion", unsafe { (self.get_version)(&mut code) })?;
        Ok(format!(
            "{}.{}.{}",
            code / 10000,
            code % 10000 / 100,
            code % 100
        ))
    }

    fn unique_id(&self) -> Result<UniqueId, CollectiveError> {
        let mut id = UniqueId([0; 128]);
        // SAFETY: writes 128 bytes into id.
        self.check("ncclGetUniqueId", unsafe { (self.get_unique_id)(&mut id) })?;
        Ok(id)
    }
}

/// Loads NCCL and reports its version, without needing a GPU.
pub fn version() -> Result<String, CollectiveError> {
    Api::open()?.version()
}

/// Rank 0 creates NCCL's unique id and every rank receives it over `tcp`.
fn agree_on_id(api: &Api, tcp: &mut TcpCollective) -> Result<UniqueId, CollectiveError> {
    let mut id = if tcp.rank() == 0 {
        api.unique_id()?
    } else {
        UniqueId([0; 128])
    };
    tcp.broadcast_bytes(&mut id.0)?;
    Ok(id)
}

/// The ranks of one NCCL communicator, one GPU each.
pub struct NcclCollective {
    api: Api,
    comm: Comm,
    rank: usize,
    world: usize,
    device: Device,
}

// SAFETY: the communicator is used by one thread at a time (the training loop
// owns the collective); NCCL allows a communicator to move between threads.
unsafe impl Send for NcclCollective {}

impl NcclCollective {
    /// Builds the communicator of the ranks in `tcp`, this rank on `device`.
    pub fn join(mut tcp: TcpCollective, device: Device) -> Result<Self, CollectiveError> {
        let Device::Cuda(index) = device else {
            return Err(CollectiveError::Nccl(format!(
                "NCCL needs a CUDA device, this rank runs on {device:?}"
            )));
        };
        let api = Api::open()?;
        let id = agree_on_id(&api, &mut tcp)?;
        if let Some(set_device) = api.set_device {
            // SAFETY: selects the current CUDA device of this thread.
            let code = unsafe { set_device(index as c_int) };
            if code != 0 {
                return Err(CollectiveError::Nccl(format!(
                    "cudaSetDevice({index}) failed with CUDA error {code}"
                )));
            }
        }
        let (rank, world) = (tcp.rank(), tcp.world_size());
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: comm receives the new communicator; id is the group's unique id.
        api.check("ncclCommInitRank", unsafe {
            (api.comm_init_rank)(&mut comm, world as c_int, id, rank as c_int)
        })?;
        tracing::info!(rank, world, version = %api.version()?, "NCCL communicator ready");
        Ok(Self {
            api,
            comm,
            rank,
            world,
            device,
        })
    }

    /// Packs `tensors` into one contiguous fp32 buffer on this rank's GPU, runs
    /// `op` on it in place, and writes the result back.
    fn in_place(
        &mut self,
        tensors: &[Tensor],
        op: impl FnOnce(&Api, *mut c_void, usize, Comm) -> NcclResult,
        name: &str,
    ) -> Result<(), CollectiveError> {
        let parts: Vec<Tensor> = tensors
            .iter()
            .map(|t| {
                t.f_to_device(self.device)?
                    .f_to_kind(Kind::Float)?
                    .f_reshape([-1])
            })
            .collect::<Result<_, _>>()?;
        let flat = Tensor::f_cat(&parts, 0)?.f_contiguous()?;
        let n = flat.numel();
        // Every kernel here runs on the device's default stream, as libtorch's
        // do, so NCCL's work is ordered after the packing and before the unpacking
        // without explicit synchronisation.
        self.api
            .check(name, op(&self.api, flat.data_ptr(), n, self.comm))?;
        let mut offset = 0;
        for t in tensors {
            let n = t.numel() as i64;
            let part = flat.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?;
            tch::no_grad(|| t.shallow_clone().f_copy_(&part))?;
            offset += n;
        }
        Ok(())
    }
}

impl NcclCollective {
    /// Runs `op` from `input` (1-D, `input_len` values) into a fresh fp32
    /// buffer of `output_len` values on this rank's GPU.
    fn out_of_place(
        &mut self,
        input: &Tensor,
        output_len: usize,
        op: impl FnOnce(&Api, *const c_void, *mut c_void, Comm) -> NcclResult,
        name: &str,
    ) -> Result<Tensor, CollectiveError> {
        let input = input
            .f_to_device(self.device)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        let output = Tensor::f_empty([output_len as i64], (Kind::Float, self.device))?;
        // Ordered on the default stream as in `in_place`.
        self.api.check(
            name,
            op(&self.api, input.data_ptr(), output.data_ptr(), self.comm),
        )?;
        Ok(output)
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_mean(&mut self, tensors: &[Tensor]) -> Result<(), CollectiveError> {
        self.in_place(
            tensors,
            |api, ptr, n, comm| {
                // SAFETY: ptr addresses n floats on this rank's GPU, alive until
                // the stream reaches the unpacking copies.
                unsafe {
                    (api.all_reduce)(
                        ptr,
                        ptr,
                        n,
                        NCCL_FLOAT32,
                        NCCL_AVG,
                        comm,
                        std::ptr::null_mut(),
                    )
                }
            },
            "ncclAllReduce",
        )
    }

    fn broadcast(&mut self, tensors: &[Tensor]) -> Result<(), CollectiveError> {
        self.in_place(
            tensors,
            |api, ptr, n, comm| {
                // SAFETY: as for all_reduce_mean.
                unsafe { (api.broadcast)(ptr, ptr, n, NCCL_FLOAT32, 0, comm, std::ptr::null_mut()) }
            },
            "ncclBroadcast",
        )
    }

    fn reduce_scatter_mean(&mut self, flat: &Tensor) -> Result<Tensor, CollectiveError> {
        let n = flat.numel();
        if !n.is_multiple_of(self.world) {
            return Err(CollectiveError::Mismatch(format!(
                "a reduce-scatter of {n} values does not split over {} ranks (pad to whole shards)",
                self.world
            )));
        }
        let shard = n / self.world;
        self.out_of_place(
            flat,
            shard,
            |api, input, output, comm| {
                // SAFETY: input addresses world × shard floats and output shard
                // floats on this rank's GPU, both alive until the stream has run
                // the reduction (the tensors outlive this call's queueing and
                // libtorch frees memory in stream order).
                unsafe {
                    (api.reduce_scatter)(
                        input,
                        output,
                        shard,
                        NCCL_FLOAT32,
                        NCCL_AVG,
                        comm,
                        std::ptr::null_mut(),
                    )
                }
            },
            "ncclReduceScatter",
        )
    }

    fn all_gather(&mut self, shard: &Tensor) -> Result<Tensor, CollectiveError> {
        let n = shard.numel();
        self.out_of_place(
            shard,
            n * self.world,
            |api, input, output, comm| {
                // SAFETY: input addresses n floats and output world × n floats
                // on this rank's GPU, as for reduce_scatter_mean.
                unsafe {
                    (api.all_gather)(input, output, n, NCCL_FLOAT32, comm, std::ptr::null_mut())
                }
            },
            "ncclAllGather",
        )
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        let token = Tensor::f_zeros([1], (Kind::Float, self.device))?;
        self.all_reduce_mean(&[token.shallow_clone()])?;
        // Reading the value waits for the reduction, so every rank has arrived.
        token.f_double_value(&[0])?;
        Ok(())
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // SAFETY: comm was created by ncclCommInitRank and is destroyed once.
        let _ = unsafe { (self.api.comm_destroy)(self.comm) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    /// The trainer links libtorch_cuda, which loads NCCL: opening it must find
    /// that copy and its entry points, with or without a GPU.
    #[test]
    fn nccl_loads_from_libtorch() {
        let version = version().expect("NCCL loads");
        assert!(version.starts_with("2."), "{version}");
    }

    /// Rank 0's unique id reaches every rank byte for byte over TCP (the part of
    /// communicator setup that needs no GPU).
    #[test]
    fn ranks_agree_on_the_unique_id() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let handles: Vec<_> = (0..3)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut tcp =
                        TcpCollective::connect(rank, 3, &addr, Duration::from_secs(20)).unwrap();
                    let api = Api::open().unwrap();
                    agree_on_id(&api, &mut tcp).unwrap().0
                })
            })
            .collect();
        let ids: Vec<[u8; 128]> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(ids[0], [0; 128], "rank 0 made an id");
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "every rank has rank 0's id"
        );
    }

    #[test]
    fn a_cpu_rank_cannot_join() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tcp =
            TcpCollective::connect(0, 1, &format!("127.0.0.1:{port}"), Duration::from_secs(1))
                .unwrap();
        let err = NcclCollective::join(tcp, Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("needs a CUDA device"), "{err}");
    }
}
