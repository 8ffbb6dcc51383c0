//! Unit tests of reading `known_hosts` as OpenSSH does.
use super::*;

const A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILmxf4oHYYqvXKXOUWaEtbG7Lt0ezT+k+rOyK5ZPYfRU";
const B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEKE1P0TJJvV78tDJkHuPhCkJ3k7A0HRTRThq4311Kky";
const R: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCx1+PM8dCHd0jjfYeTRGoCB4H8GT+ijg587YnfzD7mBXBuLiEjCKr+/iemFmxGGKFtpsA9DY5CY56QDxbdtU0qx8ZjQ+mXjcQ7FEwsZEsF8eyzhLUVMlA6cvVAHV7MlppGPcZ3D29CQuwe43QZa4n38dYYDIwCUieCjbBVx2t0UQ==";

fn key(line: &str) -> PublicKey {
    line.parse().unwrap()
}

fn pinned(text: &str) -> Pinned {
    Pinned::parse(text, "127.0.0.1", 2222)
}

#[test]
fn several_keys_for_one_host_are_each_known() {
    let file = format!("[127.0.0.1]:2222 {A}\n[127.0.0.1]:2222 {B}\n");
    assert_eq!(pinned(&file).verdict(&key(A)), Verdict::Known);
    assert_eq!(pinned(&file).verdict(&key(B)), Verdict::Known);
}

#[test]
fn a_revoked_key_is_refused_though_it_is_also_listed() {
    let file = format!("[127.0.0.1]:2222 {A}\n# comment\n@revoked * {A}\n");
    assert_eq!(pinned(&file).verdict(&key(A)), Verdict::Revoked { line: 3 });
    let offered = pinned(&file).algorithms(&[Algorithm::Ed25519]);
    assert_eq!(
        offered,
        Some(vec![Algorithm::Ed25519]),
        "shown, to be refused by name"
    );
}

#[test]
fn another_key_of_a_listed_type_is_changed_and_of_another_type_unknown() {
    let file = format!("[127.0.0.1]:2222 {A}\n");
    assert_eq!(pinned(&file).verdict(&key(B)), Verdict::Changed { line: 1 });
    assert_eq!(pinned(&file).verdict(&key(R)), Verdict::Unknown);
}

#[test]
fn an_rsa_only_pin_offers_only_rsa_host_key_algorithms() {
    let file = format!("[127.0.0.1]:2222 {R}\n");
    let preferred = [
        Algorithm::Ed25519,
        Algorithm::Rsa {
            hash: Some(russh::keys::HashAlg::Sha512),
        },
        Algorithm::Rsa {
            hash: Some(russh::keys::HashAlg::Sha256),
        },
    ];
    assert_eq!(
        pinned(&file).algorithms(&preferred),
        Some(preferred[1..].to_vec())
    );
}

#[test]
fn hosts_match_by_name_port_pattern_negation_and_hash() {
    let hashed = "|1|zOB6+B/899H6c3971zQGJ4qkrXk=|EVdjNvz2ijgDYYS++PC49dEuFNo=";
    assert_eq!(
        pinned(&format!("{hashed} {A}")).verdict(&key(A)),
        Verdict::Known
    );
    assert_eq!(
        pinned(&format!("[127.0.0.*]:2222 {A}")).verdict(&key(A)),
        Verdict::Known
    );
    assert_eq!(
        pinned(&format!("127.0.0.1 {A}")).verdict(&key(A)),
        Verdict::Unknown,
        "port 22 only"
    );
    let negated = format!("[127.0.0.?]:2222,![127.0.0.1]:2222 {A}");
    assert_eq!(pinned(&negated).verdict(&key(A)), Verdict::Unknown);
    assert!(glob("*.example.org", "Files.EXAMPLE.org"));
    assert!(!glob("*.example.org", "example.org"));
}

#[test]
fn a_cert_authority_for_the_host_is_named_and_a_bad_line_is_skipped() {
    let file = format!("not a line\n@cert-authority [127.0.0.1]:2222 {B}\n[127.0.0.1]:2222 {A}\n");
    let pinned = pinned(&file);
    assert_eq!(pinned.verdict(&key(A)), Verdict::Known);
    let note = pinned.authorities_note().unwrap();
    assert!(
        note.contains("@cert-authority") && note.contains("line 2"),
        "{note}"
    );
}
