use super::*;

#[test]
fn a_payload_names_a_key_and_its_account_or_just_the_key() {
    let id: KeyId = "0123456789abcdef".parse().unwrap();
    assert_eq!(
        parse_payload("0123456789abcdef sa-1"),
        Some(Invalidation::key_of(id, "sa-1"))
    );
    // The account is everything after the first space.
    assert_eq!(
        parse_payload("0123456789abcdef sa 1 "),
        Some(Invalidation::key_of(id, "sa 1 "))
    );
    // What older versions send.
    assert_eq!(
        parse_payload("0123456789abcdef"),
        Some(Invalidation::Key(id))
    );
    for garbage in [
        "",
        " ",
        "0123456789abcdef ",
        " sa-1",
        "not-a-key-id sa-1",
        "0123456789abcdef\tsa-1",
    ] {
        assert_eq!(parse_payload(garbage), None, "{garbage:?}");
    }
}

#[test]
fn backoff_grows_and_is_capped() {
    let c = ListenerSettings::default();
    assert_eq!(backoff(&c, 0), Duration::ZERO);
    let first = backoff(&c, 1);
    assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
    let third = backoff(&c, 3);
    assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
    for failures in [10, 31, 1000, u32::MAX] {
        assert!(backoff(&c, failures) <= Duration::from_secs(5));
    }
}
