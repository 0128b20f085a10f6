//! The bundle reader and the manifest parser on arbitrary bytes: an error
//! or a bundle, never a panic. Inputs that start with the magic line get a
//! valid digest line, so the fuzzer reaches the decompressor and the tar
//! reader instead of stopping at the digest check.
#![no_main]

use capsa_bundle::{Manifest, ReadLimits, read};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let limits = ReadLimits {
        max_unpacked: 1 << 20,
        max_entries: 1000,
    };
    let _ = read(data, limits);
    let digest: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
    let mut wrapped = capsa_bundle::MAGIC.to_vec();
    wrapped.extend_from_slice(format!("sha256={digest} size={}\n", data.len()).as_bytes());
    wrapped.extend_from_slice(data);
    if let Ok(bundle) = read(&wrapped, limits) {
        // Read a second time for its bytes, the listing must hold.
        let files = capsa_bundle::contents(&bundle, &wrapped, limits).expect("read twice");
        assert_eq!(files.len(), bundle.files.len());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = Manifest::from_toml(text) {
            // What parses must survive a round trip.
            assert_eq!(Manifest::from_toml(&m.to_toml()).as_ref(), Ok(&m));
        }
    }
});
