//! The global allocator (mimalloc) and the defaults it starts with.
//!
//! Every request allocates a few small objects (header maps, futures, buffers); mimalloc's
//! thread-local free lists make that markedly cheaper than glibc's allocator (callgrind shows
//! the allocator at about a tenth of the proxy path's instructions otherwise).
//!
//! Its defaults cost memory, though. On Linux mimalloc commits its 1 GiB arenas eagerly
//! (`arena_eager_commit = 2`: on overcommitting systems) and purges freed pages only after a
//! delay, with `MADV_FREE`, which leaves them in the process's RSS until the kernel is short of
//! memory. Compiling and instantiating WebAssembly plugins allocates and frees tens of MiB at
//! start-up, so a gateway with plugins kept most of that resident (92 MiB RSS idle with one
//! plugin, 80 of it freed heap). With on-demand commit and immediate purging the same gateway
//! holds a third of that, for at most ~0.5-1 us of CPU per request (docs/benchmarks.md, "Where
//! the RSS goes").
//!
//! mimalloc reads its options once, before its first arena is reserved, which happens before
//! `main` (the Rust runtime allocates before calling it): setting them in `main` is too late.
//! So [`set_defaults`] runs as an ELF constructor in `.init_array.00099`. The linker (GNU ld
//! and lld alike) puts numbered `.init_array.N` sections in ascending order before the
//! unnumbered `.init_array`, where gcc puts mimalloc's own constructor (clang: priority 101),
//! so this runs before mimalloc initialises and before any Rust code allocates.
//!
//! `mi_option_set_default` changes only the default: mimalloc still reads `MIMALLOC_*`
//! environment variables afterwards, and one the user sets wins (e.g.
//! `MIMALLOC_ARENA_EAGER_COMMIT=2 MIMALLOC_PURGE_DELAY=1000` restore mimalloc's own defaults).

use std::ffi::{c_int, c_long};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// `mi_option_t` values of the vendored mimalloc (libmimalloc-sys 0.1.49, `c_src/mimalloc/v3/
// include/mimalloc.h`, enum `mi_option_e`; v2's are the same for these two). The test below
// checks them by name.
const MI_OPTION_ARENA_EAGER_COMMIT: c_int = 4;
const MI_OPTION_PURGE_DELAY: c_int = 15;

// Part of the mimalloc library the `mimalloc` crate links in (declared here rather than through
// libmimalloc-sys's `extended` feature, which would add a dependency for two functions).
unsafe extern "C" {
    fn mi_option_set_default(option: c_int, value: c_long);
}

/// Commit arena memory when it is used (not the whole arena up front), and give freed pages
/// back right away.
extern "C" fn set_defaults() {
    // SAFETY: sets a value in mimalloc's static option table; no allocation, no other state.
    unsafe {
        mi_option_set_default(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        mi_option_set_default(MI_OPTION_PURGE_DELAY, 0);
    }
}

#[used]
#[unsafe(link_section = ".init_array.00099")]
static SET_DEFAULTS: extern "C" fn() = set_defaults;

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, c_char, c_void};

    unsafe extern "C" {
        fn mi_options_print_out(
            out: Option<unsafe extern "C" fn(*const c_char, *mut c_void)>,
            arg: *mut c_void,
        );
    }

    unsafe extern "C" fn collect(message: *const c_char, arg: *mut c_void) {
        // SAFETY: `arg` is the `String` passed below; mimalloc passes a C string.
        let text = unsafe { &mut *arg.cast::<String>() };
        text.push_str(&unsafe { CStr::from_ptr(message) }.to_string_lossy());
    }

    /// The options are in effect in this (test) process, by name: so the ids above are right
    /// and the constructor ran before mimalloc read its options.
    #[test]
    fn defaults_are_in_effect() {
        let mut text = String::new();
        // SAFETY: `collect` matches `mi_output_fun`; `text` outlives the call.
        unsafe { mi_options_print_out(Some(collect), (&raw mut text).cast()) };
        for (variable, line) in [
            (
                "MIMALLOC_ARENA_EAGER_COMMIT",
                "option 'arena_eager_commit': 0",
            ),
            ("MIMALLOC_PURGE_DELAY", "option 'purge_delay': 0"),
        ] {
            if std::env::var_os(variable).is_none() {
                assert!(text.lines().any(|l| l.trim() == line), "{line}:\n{text}");
            }
        }
    }
}
