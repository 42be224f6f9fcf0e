//! Files under `docs/` that are rendered from the code (the configuration
//! reference, the REST API reference, the operations table): their tests
//! compare the file in the repository with the rendering and fail when it
//! is stale; `FLOWNEXUS_BLESS=1` rewrites it instead.

/// The file at `rel` (from the repository root) must read `want`.
pub fn assert_current(rel: &str, want: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if std::env::var_os("FLOWNEXUS_BLESS").is_some() {
        std::fs::write(&path, want).unwrap_or_else(|e| panic!("{rel}: {e}"));
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{rel} is stale: run `FLOWNEXUS_BLESS=1 cargo test --lib` and commit it"
    );
}
