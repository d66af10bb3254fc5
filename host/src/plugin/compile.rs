//! Compiling plugins outside the gateway's process, and the on-disk cache of what was compiled.
//!
//! Cranelift's code (most of the binary's text) and the tens of MiB its compilations allocate
//! would otherwise stay in the gateway's memory for as long as it runs. So the gateway runs its
//! own binary again as `wasmgate __compile-plugin`: that short-lived process reads the wasm on
//! standard input, compiles it with the gateway's compile settings
//! ([`super::engine::compile_config`]), writes the artifact to the path it is given (a temporary
//! file, renamed into place) and exits. The gateway then maps the artifact
//! (`Component::deserialize_file`), so its code is file-backed and only the metadata is read
//! into the heap.
//!
//! Artifacts are kept in a cache directory keyed by the SHA-256 of the wasm and the engine's
//! compatibility hash, so that a restart compiles nothing. Each file ends with the SHA-256 of
//! the artifact before it, checked before the file is mapped: a damaged or truncated file is
//! compiled again, never run.
//!
//! The library compiles in-process (as `Component::new`) unless the binary said, with
//! [`set_compiler`], which executable to run: unit tests, whose executable is the test harness,
//! compile in-process.

use std::fs::{self, DirBuilder, File};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::hex::hex;

/// The environment variable that names the cache directory (or `off`).
pub const CACHE_ENV: &str = "WASMGATE_PLUGIN_CACHE";
/// The hidden subcommand the gateway runs to compile a plugin.
pub const SUBCOMMAND: &str = "__compile-plugin";
/// Cache entries not used for this long are removed.
const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// At most this many entries are kept; the least recently used go first.
const MAX_ENTRIES: usize = 128;
/// A compile process's temporary file older than this was left by one that died.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);
/// The end of every artifact file: the SHA-256 of what precedes it, then this marker.
const TRAILER_MARK: &[u8; 16] = b"wasmgate-cwasm/1";
const TRAILER_LEN: u64 = 32 + TRAILER_MARK.len() as u64;
const EXTENSION: &str = "cwasm";

/// The compile process's exit codes (anything else, or a signal, is a failure of the process).
const EXIT_INVALID: u8 = 3;
const EXIT_OTHER_ENGINE: u8 = 4;
const EXIT_FAILED: u8 = 5;

static COMPILER: OnceLock<PathBuf> = OnceLock::new();

/// Tells the plugin module that `exe` is the `wasmgate` binary, so plugins are compiled by
/// running `exe __compile-plugin` rather than in this process. Only the first call counts.
pub fn set_compiler(exe: PathBuf) {
    let _ = COMPILER.set(exe);
}

/// How a component came to be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled in an earlier process and mapped from the cache directory.
    DiskCache,
    /// Compiled by a compile process now.
    CompileProcess,
    /// Compiled in this process (no compile process was configured, or it could not be used).
    InProcess,
}

/// Where compiled plugins are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CacheDir {
    /// A directory that outlives the process.
    Persistent(PathBuf),
    /// None: each artifact goes to a new private temporary directory and is removed once it
    /// is mapped.
    Off,
}

/// The configured cache directory, from `WASMGATE_PLUGIN_CACHE`, `XDG_CACHE_HOME` and `HOME`
/// (their values as given): `off` turns the cache off; a path names the directory; unset or
/// empty means `$XDG_CACHE_HOME/wasmgate`, else `$HOME/.cache/wasmgate` (relative values of
/// those two are ignored, as the XDG specification says), else off.
fn configured_dir(
    setting: Option<&str>,
    xdg_cache_home: Option<&str>,
    home: Option<&str>,
) -> CacheDir {
    match setting {
        Some("off") => return CacheDir::Off,
        Some(dir) if !dir.is_empty() => return CacheDir::Persistent(PathBuf::from(dir)),
        _ => {}
    }
    fn absolute(value: Option<&str>) -> Option<&Path> {
        value.map(Path::new).filter(|path| path.is_absolute())
    }
    if let Some(base) = absolute(xdg_cache_home) {
        return CacheDir::Persistent(base.join("wasmgate"));
    }
    if let Some(home) = absolute(home) {
        return CacheDir::Persistent(home.join(".cache").join("wasmgate"));
    }
    CacheDir::Off
}

/// The cache directory, settled on first use (a gateway without plugins never creates it). A
/// directory that cannot be used turns the cache off, with a warning.
fn cache_dir() -> &'static CacheDir {
    static DIR: OnceLock<CacheDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok();
        let dir = configured_dir(
            var(CACHE_ENV).as_deref(),
            var("XDG_CACHE_HOME").as_deref(),
            var("HOME").as_deref(),
        );
        if let CacheDir::Persistent(path) = &dir
            && let Err(err) = prepare_private_dir(path)
        {
            tracing::warn!(
                "plugin cache {} is not usable ({err}); compiled plugins are not kept \
                 (set {CACHE_ENV} to another directory, or to `off`)",
                path.display()
            );
            return CacheDir::Off;
        }
        dir
    })
}

/// Creates `dir` (mode 0700) if needed and checks that only this user can write to it: files
/// in it are mapped and run as code.
fn prepare_private_dir(dir: &Path) -> Result<(), String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| format!("cannot create it: {err}"))?;
    let meta = fs::metadata(dir).map_err(|err| err.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    if meta.mode() & 0o022 != 0 {
        return Err("other users may write to it".into());
    }
    // A file this process creates is owned by its effective user: the directory must be too.
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(|err| format!("cannot write to it: {err}"))?;
    let owner = file.metadata().map(|probe| probe.uid());
    drop(file);
    let _ = fs::remove_file(&probe);
    match owner {
        Ok(uid) if uid == meta.uid() => Ok(()),
        Ok(_) => Err("it belongs to another user".into()),
        Err(err) => Err(err.to_string()),
    }
}

/// The engine's compatibility hash (what decides whether an artifact compiled by one engine
/// loads in another: compiler, target, flags, tunables, wasm features, wasmtime's version), as
/// 32 hex digits.
pub fn compatibility_hash(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize()[..16])
}

/// The cache file name for a component: its wasm's SHA-256 and the engine's compatibility hash.
fn entry_name(wasm_hash: &[u8; 32], compatibility: &str) -> String {
    format!("{}-{compatibility}.{EXTENSION}", hex(wasm_hash))
}

/// Loads the component whose wasm is `bytes` (SHA-256 `hash`): from the cache, else compiled by
/// the compile process when the binary configured one, else compiled here. Errors are the
/// user's: `not a valid plugin component: ...` with the compiler's message, as from
/// `Component::new`.
pub fn load_component(
    engine: &Engine,
    hash: &[u8; 32],
    bytes: &[u8],
) -> Result<(Component, Origin), String> {
    let Some(exe) = COMPILER.get() else {
        return compile_here(engine, bytes).map(|component| (component, Origin::InProcess));
    };
    static COMPATIBILITY: OnceLock<String> = OnceLock::new();
    let compatibility = COMPATIBILITY.get_or_init(|| compatibility_hash(engine));
    let name = entry_name(hash, compatibility);
    let outcome = match cache_dir() {
        CacheDir::Persistent(dir) => {
            let path = dir.join(&name);
            match load_artifact(engine, &path) {
                Ok(component) => {
                    // Marks the entry used, for `prune`.
                    let _ = File::open(&path).and_then(|file| file.set_modified(SystemTime::now()));
                    return Ok((component, Origin::DiskCache));
                }
                Err(Unusable::Missing) => {}
                Err(Unusable::Damaged(why)) => {
                    tracing::warn!(
                        "plugin cache: {} is unusable ({why}); compiling it again",
                        path.display()
                    );
                    let _ = fs::remove_file(&path);
                }
            }
            let outcome = compile_elsewhere(engine, exe, bytes, &path, compatibility);
            if outcome.is_ok() {
                prune(dir, SystemTime::now());
            }
            outcome
        }
        CacheDir::Off => match PrivateTempDir::create() {
            // Once mapped, the file may go: the mapping keeps it.
            Ok(temp) => compile_elsewhere(engine, exe, bytes, &temp.0.join(&name), compatibility),
            Err(err) => Err(Failure::Other(format!(
                "cannot create a temporary directory: {err}"
            ))),
        },
    };
    match outcome {
        Ok(component) => Ok((component, Origin::CompileProcess)),
        Err(Failure::Invalid(message)) => Err(format!("not a valid plugin component: {message}")),
        Err(Failure::Other(reason)) => {
            tracing::warn!("plugin compile process: {reason}; compiling in the gateway instead");
            compile_here(engine, bytes).map(|component| (component, Origin::InProcess))
        }
    }
}

/// Why a compile process gave no component.
enum Failure {
    /// The wasm is not a valid component: the compiler's message.
    Invalid(String),
    /// Anything else (no process, a crash, an unwritable file, another build of wasmgate).
    Other(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure::Other(reason)
    }
}

/// Compiles `bytes` with a compile process into `path` and maps the result.
fn compile_elsewhere(
    engine: &Engine,
    exe: &Path,
    bytes: &[u8],
    path: &Path,
    compatibility: &str,
) -> Result<Component, Failure> {
    run_compile_process(exe, bytes, path, compatibility)?;
    load_artifact(engine, path).map_err(|unusable| {
        Failure::Other(match unusable {
            Unusable::Missing => format!("{} was not written", path.display()),
            Unusable::Damaged(why) => {
                // Not left for the next start to find.
                let _ = fs::remove_file(path);
                format!("its artifact does not load: {why}")
            }
        })
    })
}

/// Runs `exe __compile-plugin --out PATH --engine HASH` with the wasm on its standard input.
fn run_compile_process(
    exe: &Path,
    bytes: &[u8],
    out: &Path,
    compatibility: &str,
) -> Result<(), Failure> {
    let mut child = Command::new(exe)
        .arg(SUBCOMMAND)
        .arg("--out")
        .arg(out)
        .args(["--engine", compatibility])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", exe.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A process that stopped early closes its end; its exit status says why.
        let _ = stdin.write_all(bytes);
    }
    let output = child
        .wait_with_output()
        .map_err(|err| format!("lost the compile process: {err}"))?;
    let message = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_owned();
    match output
        .status
        .code()
        .and_then(|code| u8::try_from(code).ok())
    {
        Some(0) => Ok(()),
        Some(EXIT_INVALID) => Err(Failure::Invalid(message)),
        Some(EXIT_OTHER_ENGINE) => Err(Failure::Other(format!(
            "{} is another build of wasmgate ({message})",
            exe.display()
        ))),
        _ => Err(Failure::Other(describe_failure(output.status, &message))),
    }
}

fn describe_failure(status: ExitStatus, message: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match status.signal() {
        Some(signal) => format!("killed by signal {signal}"),
        None => format!("failed ({status})"),
    };
    if message.is_empty() {
        format!("the compile process {how}")
    } else {
        format!("the compile process {how}: {message}")
    }
}

/// Compiles in this process (what the gateway did before it had compile processes).
fn compile_here(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    let component = Component::new(engine, bytes)
        .map_err(|err| format!("not a valid plugin component: {err:#}"));
    super::engine::release_compiler_memory();
    component
}

/// Why a cache file was not loaded.
enum Unusable {
    Missing,
    Damaged(String),
}

/// Checks the artifact at `path` against its trailer and maps it.
fn load_artifact(engine: &Engine, path: &Path) -> Result<Component, Unusable> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(Unusable::Missing),
        Err(err) => return Err(Unusable::Damaged(err.to_string())),
    };
    verify(&file).map_err(Unusable::Damaged)?;
    // SAFETY: `deserialize_file` trusts the file to be an artifact that wasmtime wrote for this
    // engine's settings and maps it as code, so it must be nothing else and must not change
    // while mapped. The file was written by this very binary (the compile process is
    // `/proc/self/exe` or `current_exe()`, and refuses to compile when its engine's
    // compatibility hash differs from ours) into a directory only this user may write (checked
    // by `prepare_private_dir`, or a fresh 0700 temporary directory); its name carries the
    // wasm's hash and the compatibility hash, and wasmtime checks the latter again from the
    // file's own header. The bytes just hashed match the SHA-256 the compile process stored
    // after them, so a damaged or truncated file never gets here. Files are never modified in
    // place: they appear by `rename` and go by `unlink`, which leave a mapping intact.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|err| {
        let message = format!("{err:#}");
        Unusable::Damaged(message)
    })
}

/// Checks that `file` ends with the SHA-256 of its other bytes and [`TRAILER_MARK`].
fn verify(file: &File) -> Result<(), String> {
    let len = file.metadata().map_err(|err| err.to_string())?.len();
    if len <= TRAILER_LEN {
        return Err(format!("{len} bytes: too short"));
    }
    let mut hasher = Sha256::new();
    let mut reader = file.take(len - TRAILER_LEN);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.to_string()),
        }
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    reader
        .into_inner()
        .read_exact(&mut trailer)
        .map_err(|err| format!("cannot read its checksum: {err}"))?;
    if &trailer[32..] != TRAILER_MARK {
        return Err("no wasmgate checksum at its end".into());
    }
    if trailer[..32] != hasher.finalize()[..] {
        return Err("its checksum does not match".into());
    }
    Ok(())
}

/// Writes `artifact` and its trailer to `path`, through a temporary file in the same directory
/// renamed into place, so that no one ever sees (or maps) a partial file.
fn write_artifact(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    let temporary = path.with_file_name(name);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(artifact)?;
        file.write_all(&Sha256::digest(artifact))?;
        file.write_all(TRAILER_MARK)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// Keeps the cache bounded: removes entries not used for [`MAX_AGE`] (a load refreshes an
/// entry's modification time), then the least recently used beyond [`MAX_ENTRIES`], and
/// temporary files that a compile process left behind.
fn prune(dir: &Path, now: SystemTime) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    let age = |meta: &fs::Metadata| {
        meta.modified()
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .unwrap_or_default()
    };
    let mut entries = Vec::new();
    for entry in listing.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let path = entry.path();
        if name.ends_with(&format!(".{EXTENSION}")) {
            if age(&meta) > MAX_AGE {
                let _ = fs::remove_file(&path);
            } else {
                entries.push((age(&meta), path));
            }
        } else if name.contains(&format!(".{EXTENSION}.tmp.")) && age(&meta) > STALE_TEMPORARY {
            let _ = fs::remove_file(&path);
        }
    }
    if entries.len() > MAX_ENTRIES {
        entries.sort();
        for (_, path) in &entries[MAX_ENTRIES..] {
            let _ = fs::remove_file(path);
        }
    }
}

/// A new directory of mode 0700 in the system's temporary directory, removed on drop.
struct PrivateTempDir(PathBuf);

impl PrivateTempDir {
    fn create() -> std::io::Result<PrivateTempDir> {
        let base = std::env::temp_dir();
        let mut attempt = 0u32;
        loop {
            let path = base.join(format!("wasmgate-plugin-{}-{attempt}", std::process::id()));
            // Never an existing directory (or a link someone planted): `create` fails then.
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateTempDir(path)),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

impl Drop for PrivateTempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `wasmgate __compile-plugin --out PATH --engine HASH`: compiles the wasm on standard input
/// with the gateway's compile settings and writes the artifact to `out`. Exits with 0, or
/// [`EXIT_INVALID`] and the compiler's message on standard error when the wasm is not a valid
/// component, or [`EXIT_OTHER_ENGINE`] when this binary's engine is not the caller's.
pub fn compile_process_main(out: &Path, expected_engine: &str) -> ExitCode {
    let fail = |code: u8, message: String| {
        eprint!("{message}");
        ExitCode::from(code)
    };
    let mut bytes = Vec::new();
    if let Err(err) = std::io::stdin().lock().read_to_end(&mut bytes) {
        return fail(EXIT_FAILED, format!("cannot read the plugin: {err}"));
    }
    let engine = match Engine::new(&super::engine::compile_config()) {
        Ok(engine) => engine,
        Err(err) => return fail(EXIT_FAILED, format!("cannot start the engine: {err:#}")),
    };
    let compatibility = compatibility_hash(&engine);
    if compatibility != expected_engine {
        return fail(
            EXIT_OTHER_ENGINE,
            format!("its engine is {compatibility}, the gateway's {expected_engine}"),
        );
    }
    let artifact = match engine.precompile_component(&bytes) {
        Ok(artifact) => artifact,
        Err(err) => return fail(EXIT_INVALID, format!("{err:#}")),
    };
    match write_artifact(out, &artifact) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(
            EXIT_FAILED,
            format!("cannot write {}: {err}", out.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(config: wasmtime::Config) -> Engine {
        Engine::new(&config).unwrap()
    }

    #[test]
    fn the_cache_key_is_the_wasm_and_the_engine() {
        let plain = engine(super::super::engine::compile_config());
        let gateway = &super::super::engine::PluginEngine::get().unwrap().engine;
        // The gateway's engine (pooling allocator) and the compile process's (default
        // allocator) compile alike, so they share entries.
        assert_eq!(compatibility_hash(&plain), compatibility_hash(gateway));
        assert_eq!(compatibility_hash(&plain).len(), 32);
        // A compile setting is part of the key.
        let mut other = super::super::engine::compile_config();
        other.epoch_interruption(false);
        assert_ne!(
            compatibility_hash(&plain),
            compatibility_hash(&engine(other))
        );

        let compat = compatibility_hash(&plain);
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        assert_eq!(entry_name(&a, &compat), entry_name(&a, &compat));
        assert_ne!(entry_name(&a, &compat), entry_name(&b, &compat));
        assert_eq!(
            entry_name(&a, &compat),
            format!("{}-{compat}.cwasm", hex(&a)),
        );
        assert!(entry_name(&a, &compat).starts_with("ca978112ca1bbdcafac231b39a23dc4d"));
    }

    #[test]
    fn the_cache_directory_comes_from_the_environment() {
        let persistent = |path: &str| CacheDir::Persistent(PathBuf::from(path));
        assert_eq!(
            configured_dir(Some("off"), Some("/x"), Some("/h")),
            CacheDir::Off
        );
        assert_eq!(
            configured_dir(Some("/var/cache/gw"), Some("/x"), Some("/h")),
            persistent("/var/cache/gw")
        );
        assert_eq!(
            configured_dir(None, Some("/x"), Some("/h")),
            persistent("/x/wasmgate")
        );
        assert_eq!(
            configured_dir(Some(""), Some("rel"), Some("/h")),
            persistent("/h/.cache/wasmgate")
        );
        assert_eq!(configured_dir(None, None, None), CacheDir::Off);
        assert_eq!(configured_dir(None, None, Some("rel")), CacheDir::Off);
    }

    #[test]
    fn an_artifact_is_checked_before_it_is_mapped() {
        let engine = engine(super::super::engine::compile_config());
        let wasm =
            std::fs::read(concat!(env!("WASMGATE_PLUGIN_DIR"), "/first_plugin.wasm")).unwrap();
        let artifact = engine.precompile_component(&wasm).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry.cwasm");
        write_artifact(&path, &artifact).unwrap();
        // Only the final file is left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(load_artifact(&engine, &path).is_ok());

        // One byte changed in the code, or the file cut short: refused, not mapped.
        let mut damaged = std::fs::read(&path).unwrap();
        damaged[artifact.len() / 2] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        let Err(Unusable::Damaged(why)) = load_artifact(&engine, &path) else {
            panic!("a damaged artifact was loaded")
        };
        assert!(why.contains("checksum does not match"), "{why}");
        std::fs::write(&path, &damaged[..artifact.len() / 3]).unwrap();
        assert!(matches!(
            load_artifact(&engine, &path),
            Err(Unusable::Damaged(_))
        ));
        assert!(matches!(
            load_artifact(&engine, &dir.path().join("none.cwasm")),
            Err(Unusable::Missing)
        ));
    }

    #[test]
    fn pruning_keeps_the_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let touch = |name: &str, age: Duration| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(now - age)
                .unwrap();
        };
        touch("old.cwasm", 31 * day);
        touch("recent.cwasm", 29 * day);
        touch("left.cwasm.tmp.1", 2 * STALE_TEMPORARY);
        touch("writing.cwasm.tmp.2", Duration::ZERO);
        touch("other-file", 400 * day);
        for i in 0..MAX_ENTRIES + 1 {
            touch(&format!("e{i}.cwasm"), Duration::from_secs(i as u64));
        }
        prune(dir.path(), now);
        let exists = |name: &str| dir.path().join(name).exists();
        assert!(!exists("old.cwasm"));
        assert!(!exists("left.cwasm.tmp.1"));
        assert!(exists("writing.cwasm.tmp.2"));
        assert!(exists("other-file"));
        // 130 entries younger than 30 days: the two least recently used go.
        assert!(!exists("recent.cwasm"));
        assert!(!exists(&format!("e{MAX_ENTRIES}.cwasm")));
        assert!(exists(&format!("e{}.cwasm", MAX_ENTRIES - 1)));
        assert!(exists("e0.cwasm"));
    }
}
