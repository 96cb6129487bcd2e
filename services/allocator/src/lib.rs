//! The process's memory allocator: mimalloc for the consumer services, the system's (glibc's)
//! for the rest, chosen once per process before its first allocation.
//!
//! Every service is the one `aftercart` binary, and the two kinds of service want different
//! allocators (measured in `bench/NOTES.md`): the consumer stages spend about a third of their
//! CPU in glibc's malloc and free, and mimalloc cut their CPU per record by 8–37 % (about a
//! fifth at the median);
//! the ingress gains a few per cent of CPU with it but keeps ≈ 26 MiB more resident, which its
//! 64 MiB target cannot spare. So [`ByService`] decides at the process's first allocation, from
//! its command line and `AFTERCART_ALLOCATOR` ([`choice::choose`]), and never changes its mind:
//! every block is freed by the allocator that gave it.

mod choice;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

pub use choice::{choose, expected, Choice, CONSUMER_COMMANDS, FLAG, OTHER_COMMANDS, VARIABLE};

/// The allocator the consumer services run with (benchmarks of a consumer use it directly).
pub type ConsumerAllocator = mimalloc::MiMalloc;

/// The binary's global allocator: `#[global_allocator] static A: ByService = ByService;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ByService;

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

/// The decision, made once (racing first allocations decide the same).
static DECIDED: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The allocator this process runs with, once it has allocated anything (the `aftercart`
/// binary allocates before it parses its command line); `None` where [`ByService`] is not the
/// global allocator, or before its first allocation.
pub fn in_use() -> Option<Choice> {
    match DECIDED.load(Ordering::Acquire) {
        SYSTEM => Some(Choice::System),
        MIMALLOC => Some(Choice::Mimalloc),
        _ => None,
    }
}

impl ByService {
    /// Every call: one load and a branch. The decision is out of line ([`decide`]): inlined,
    /// its 32 KiB buffer made every allocation probe 32 KiB of stack first.
    #[inline(always)]
    fn mimalloc(&self) -> bool {
        match DECIDED.load(Ordering::Acquire) {
            MIMALLOC => true,
            SYSTEM => false,
            _ => decide(),
        }
    }
}

/// The decision, once per process (a race decides the same twice and keeps the first).
#[cold]
#[inline(never)]
fn decide() -> bool {
    let wanted = match read_choice() {
        Choice::Mimalloc => MIMALLOC,
        Choice::System => SYSTEM,
    };
    match DECIDED.compare_exchange(UNDECIDED, wanted, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => wanted == MIMALLOC,
        Err(decided) => decided == MIMALLOC,
    }
}

/// Reads the command line and the variable without allocating (this runs inside the first
/// allocation): `/proc/self/cmdline` into a stack buffer (32 KiB, on the stack of the thread
/// that allocates first, the main thread; a longer command line is read that far), `getenv`
/// for the variable. Where `/proc` cannot be read, only the variable counts. The binary compares the outcome with its parsed command
/// line and warns where they differ ([`expected`]).
#[allow(unsafe_code)]
#[inline(never)]
fn read_choice() -> Choice {
    let mut buffer = [0u8; 32 << 10];
    let mut length = 0;
    // SAFETY: the path is a NUL-terminated literal; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        while length < buffer.len() {
            let rest = &mut buffer[length..];
            // SAFETY: `rest` is valid for writes of `rest.len()` bytes.
            let read = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
            if read < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if read <= 0 {
                break;
            }
            length += read as usize;
        }
        // SAFETY: `fd` is open and ours.
        unsafe { libc::close(fd) };
    }
    // SAFETY: the name is a NUL-terminated literal; the value, when there is one, is a
    // NUL-terminated string of the environment, read before anything else runs that could
    // change the environment (this is the process's first allocation).
    let variable = unsafe {
        let value = libc::getenv(c"AFTERCART_ALLOCATOR".as_ptr());
        (!value.is_null()).then(|| std::ffi::CStr::from_ptr(value).to_bytes())
    };
    choose(&buffer[..length], variable)
}

// SAFETY: every call goes to one of two sound allocators, the same one for the process's whole
// life ([`ByService::mimalloc`] decides once), so a block is always resized and freed by the
// allocator that gave it; the layout contracts are passed on unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for ByService {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.mimalloc() {
            // SAFETY: the caller's contract for `layout`, passed on.
            unsafe { ConsumerAllocator {}.alloc(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.mimalloc() {
            // SAFETY: the caller's contract for `layout`, passed on.
            unsafe { ConsumerAllocator {}.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.mimalloc() {
            // SAFETY: `ptr` came from this allocator (decided once) with `layout`.
            unsafe { ConsumerAllocator {}.dealloc(ptr, layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.mimalloc() {
            // SAFETY: `ptr` came from this allocator (decided once) with `layout`.
            unsafe { ConsumerAllocator {}.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}
