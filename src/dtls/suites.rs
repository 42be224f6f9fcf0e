//! The DTLS cipher suites we offer and their IANA names: a leaf module, so
//! that the config can check `coaps.cipher_suites` without depending on
//! the session table (which reads its settings from the config).

use rtc_dtls::cipher_suite::CipherSuiteId;

/// The suites we accept, most preferred first. CCM_8 is what the nRF9160
/// modem and tinydtls clients offer (RFC 7252 §9.1.3.1 makes it mandatory
/// for CoAP); rtc-dtls has no PSK-CBC suite.
pub const CIPHER_SUITES: [CipherSuiteId; 3] = [
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
    CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
];

/// The suites named in `names` (IANA names), in order; an error names
/// what is unknown.
pub fn cipher_suites(names: &[String]) -> std::result::Result<Vec<CipherSuiteId>, String> {
    if names.is_empty() {
        return Err("at least one cipher suite is needed".into());
    }
    names
        .iter()
        .map(|n| {
            CIPHER_SUITES
                .iter()
                .copied()
                .find(|s| s.to_string() == *n)
                .ok_or_else(|| {
                    let known: Vec<String> = CIPHER_SUITES.iter().map(|s| s.to_string()).collect();
                    format!("unknown or unsupported suite {n}; supported: {}", known.join(", "))
                })
        })
        .collect()
}
