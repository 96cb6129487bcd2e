//! The allocator as the global allocator of a real process: it decides once, from the command
//! line and `AFTERCART_ALLOCATOR`, and serves every kind of allocation from either allocator.

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::process::Command;

use aftercart_allocator::{in_use, ByService, Choice, VARIABLE};

#[global_allocator]
static GLOBAL: ByService = ByService;

/// A block whose alignment (4096) is above any allocator's default.
#[repr(align(4096))]
struct Aligned([u8; 4096]);

/// Set for a child run of this binary: the allocator it must report.
const EXPECT: &str = "AFTERCART_ALLOCATOR_TEST_EXPECT";

/// Allocations of every shape: small and large, zeroed, aligned, grown and shrunk, and freed on
/// another thread than the one that allocated.
#[allow(unsafe_code)]
fn exercise() {
    let mut blocks: Vec<Vec<u8>> = (0..2_000).map(|n| vec![n as u8; n * 37 % 5_000]).collect();
    for (n, block) in blocks.iter_mut().enumerate() {
        block.extend(std::iter::repeat_n(7u8, n % 300));
        block.shrink_to_fit();
    }
    let big = vec![1u8; 8 << 20];
    let freed_elsewhere = std::thread::spawn(move || {
        let sum: usize = blocks.iter().map(Vec::len).sum::<usize>() + big.len();
        drop((blocks, big));
        sum
    })
    .join()
    .expect("the thread ran");
    assert!(freed_elsewhere > 8 << 20);
    // The blocks really come from the allocator reported: mimalloc's own heap, or not. One of
    // each path: alloc, alloc_zeroed, realloc, over-aligned.
    let probe = Box::new([7u8; 100]);
    let zeroed = vec![0u8; 4 << 20];
    let mut grown = vec![1u8; 10];
    grown.reserve_exact(1 << 16);
    let aligned = Box::new(Aligned([0; 4096]));
    let addresses: [*const u8; 4] = [
        probe.as_ptr(),
        zeroed.as_ptr(),
        grown.as_ptr(),
        aligned.0.as_ptr(),
    ];
    // SAFETY: a query about an address, which is not dereferenced.
    let in_mimalloc =
        addresses.map(|at| unsafe { libmimalloc_sys::mi_is_in_heap_region(at.cast()) });
    let on_mimalloc = in_use() == Some(Choice::Mimalloc);
    assert_eq!(in_mimalloc, [on_mimalloc; 4]);
    for (size, align) in [(24, 8), (4096, 4096), (100, 64), (3 << 20, 2 << 20)] {
        let layout = Layout::from_size_align(size, align).expect("layout");
        // SAFETY: non-zero sizes and valid alignments; each block is freed with the layout it
        // has at that moment.
        unsafe {
            let zeroed = alloc_zeroed(layout);
            assert!(!zeroed.is_null() && (zeroed as usize).is_multiple_of(align));
            assert!(std::slice::from_raw_parts(zeroed, size)
                .iter()
                .all(|b| *b == 0));
            dealloc(zeroed, layout);
            let block = alloc(layout);
            assert!(!block.is_null());
            block.write_bytes(0xAB, size);
            let grown = realloc(block, layout, size * 3);
            assert!(!grown.is_null() && (grown as usize).is_multiple_of(align));
            assert_eq!(*grown.add(size - 1), 0xAB);
            let shrunk = realloc(
                grown,
                Layout::from_size_align(size * 3, align).unwrap(),
                size / 2 + 1,
            );
            assert_eq!(*shrunk, 0xAB);
            dealloc(
                shrunk,
                Layout::from_size_align(size / 2 + 1, align).unwrap(),
            );
        }
    }
}

#[test]
fn a_process_without_a_subcommand_runs_on_what_it_is_told_or_the_system_allocator() {
    let expected = match std::env::var(EXPECT).as_deref() {
        Ok("mimalloc") => Choice::Mimalloc,
        Ok(_) => Choice::System,
        // Not a child run: this test binary names no subcommand.
        Err(_) => match std::env::var(VARIABLE).as_deref() {
            Ok("mimalloc") => Choice::Mimalloc,
            _ => Choice::System,
        },
    };
    assert_eq!(in_use(), Some(expected));
    exercise();
}

/// Runs the test above in a fresh process of this binary with `arguments` and the variable.
fn child_reports(arguments: &[&str], variable: Option<&str>, expected: Choice) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"));
    child
        .args([
            "--exact",
            "a_process_without_a_subcommand_runs_on_what_it_is_told_or_the_system_allocator",
        ])
        .args(arguments)
        .env(EXPECT, expected.name())
        .env_remove(VARIABLE);
    if let Some(value) = variable {
        child.env(VARIABLE, value);
    }
    let output = child.output().expect("child ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{arguments:?} {variable:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_subcommand_and_the_variable_choose_the_allocator_of_a_fresh_process() {
    child_reports(&[], None, Choice::System);
    child_reports(&[], Some("mimalloc"), Choice::Mimalloc);
    // A consumer's name on the command line (libtest takes it as one more test name to run).
    child_reports(&["referrals"], None, Choice::Mimalloc);
    child_reports(&["referrals"], Some("system"), Choice::System);
    child_reports(&["ingress"], None, Choice::System);
}
