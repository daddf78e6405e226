use smolvm_protocol::*;

fn roundtrip(frame: Frame) {
    let bytes = frame.to_bytes();
    let (decoded, used) = Frame::decode(&bytes).unwrap().expect("a whole frame");
    assert_eq!(used, bytes.len());
    assert_eq!(decoded, frame);
}

fn header(len: u32, kind: u8, channel: u8, stream: u32) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.push(kind);
    v.push(channel);
    v.extend_from_slice(&stream.to_be_bytes());
    v
}

fn decode_err(bytes: &[u8]) -> FrameError {
    Frame::decode(bytes).expect_err("must be rejected")
}

#[test]
fn every_body_round_trips() {
    roundtrip(Frame::control(
        3,
        Message::Exec(Exec {
            argv: vec!["sh".into(), "-c".into(), "echo \"hi\" ✓".into()],
            env: vec!["A=1".into()],
            workdir: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            tty: Some(TtySize { rows: 24, cols: 80 }),
            stdin: true,
            timeout_ms: Some(1500),
        }),
    ));
    roundtrip(Frame::control(
        0,
        Message::Hello(Hello {
            version: 1,
            unix_time_ns: u64::MAX,
        }),
    ));
    roundtrip(Frame::control(
        7,
        Message::Exit(ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
        }),
    ));
    roundtrip(Frame {
        stream: 9,
        body: Body::Data(Channel::Stderr, vec![0, 255, 10]),
    });
    roundtrip(Frame {
        stream: 9,
        body: Body::Data(Channel::Stdout, vec![7; MAX_PAYLOAD]),
    });
    roundtrip(Frame {
        stream: u32::MAX,
        body: Body::Eof(Channel::Stdin),
    });
    roundtrip(Frame {
        stream: 1,
        body: Body::Window(Channel::Stdout, u32::MAX),
    });
}

#[test]
fn data_frames_are_raw_bytes_not_base64() {
    let bytes = Frame {
        stream: 1,
        body: Body::Data(Channel::Stdout, b"abc".to_vec()),
    }
    .to_bytes();
    assert_eq!(bytes, [0, 0, 0, 9, 2, 1, 0, 0, 0, 1, b'a', b'b', b'c']);
}

#[test]
fn partial_input_waits_for_more() {
    let bytes = Frame {
        stream: 1,
        body: Body::Data(Channel::Stdout, vec![1; 100]),
    }
    .to_bytes();
    for cut in 0..bytes.len() {
        assert_eq!(Frame::decode(&bytes[..cut]).unwrap(), None, "cut at {cut}");
    }
    // Two frames back to back decode one at a time.
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    let (_, used) = Frame::decode(&two).unwrap().unwrap();
    assert_eq!(used, bytes.len());
}

#[test]
fn length_shorter_than_header_is_rejected() {
    assert_eq!(
        decode_err(&header(5, 2, 1, 1)),
        FrameError::LengthTooShort(5)
    );
}

#[test]
fn oversized_frame_is_rejected_before_its_payload_arrives() {
    // Only the header is present: the length alone condemns it.
    let len = (MAX_PAYLOAD + 6 + 1) as u32;
    assert_eq!(
        decode_err(&header(len, 2, 1, 1)),
        FrameError::TooLarge {
            len: MAX_PAYLOAD + 1,
            max: MAX_PAYLOAD
        }
    );
    assert!(matches!(
        decode_err(&header(u32::MAX, 1, 0, 0)),
        FrameError::TooLarge { .. }
    ));
}

#[test]
fn unknown_kind_and_channel_are_rejected() {
    assert_eq!(
        decode_err(&header(6, 0x7f, 0, 1)),
        FrameError::UnknownKind(0x7f)
    );
    let mut f = header(7, 2, 3, 1);
    f.push(b'x');
    assert_eq!(
        decode_err(&f),
        FrameError::UnknownChannel {
            kind: "data",
            channel: 3
        }
    );
    assert_eq!(
        decode_err(&header(6, 3, 9, 1)),
        FrameError::UnknownChannel {
            kind: "eof",
            channel: 9
        }
    );
}

#[test]
fn malformed_bodies_are_rejected() {
    // empty data
    assert_eq!(decode_err(&header(6, 2, 1, 4)), FrameError::EmptyData(4));
    // eof with payload
    let mut f = header(7, 3, 1, 4);
    f.push(0);
    assert_eq!(decode_err(&f), FrameError::EofPayload(1));
    // window with a short payload, and a zero window
    let mut f = header(8, 4, 1, 4);
    f.extend_from_slice(&[0, 1]);
    assert_eq!(decode_err(&f), FrameError::WindowPayload(2));
    let mut f = header(10, 4, 1, 4);
    f.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(decode_err(&f), FrameError::ZeroWindow(4));
    // data on stream 0
    let mut f = header(7, 2, 1, 0);
    f.push(1);
    assert_eq!(decode_err(&f), FrameError::StreamZero("data"));
    // control on a non-zero channel
    let mut f = header(8, 1, 2, 1);
    f.extend_from_slice(b"{}");
    assert_eq!(decode_err(&f), FrameError::ControlChannel(2));
}

#[test]
fn bad_control_json_names_the_stream_and_the_reason() {
    for body in [
        &b"not json"[..],
        b"{\"type\":\"no_such_message\"}",
        b"{\"type\":\"signal\"}",
        b"\xff\xfe",
    ] {
        let mut f = header(6 + body.len() as u32, 1, 0, 12);
        f.extend_from_slice(body);
        match decode_err(&f) {
            FrameError::BadControl { stream: 12, reason } => assert!(!reason.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn unknown_fields_in_control_messages_are_ignored() {
    let body = br#"{"type":"signal","signal":15,"added_in_a_later_version":true}"#;
    let mut f = header(6 + body.len() as u32, 1, 0, 2);
    f.extend_from_slice(body);
    let (frame, _) = Frame::decode(&f).unwrap().unwrap();
    assert_eq!(frame.body, Body::Control(Message::Signal { signal: 15 }));
}

#[test]
fn version_negotiation_picks_the_highest_common_version() {
    let a = VersionRange { min: 1, max: 3 };
    assert_eq!(a.negotiate(VersionRange { min: 2, max: 5 }), Some(3));
    assert_eq!(a.negotiate(VersionRange { min: 4, max: 5 }), None);
    assert_eq!(a.negotiate(a), Some(3));
}

#[test]
fn exit_status_maps_to_shell_codes() {
    assert_eq!(
        ExitStatus {
            code: Some(42),
            ..Default::default()
        }
        .shell_code(),
        42
    );
    assert_eq!(
        ExitStatus {
            signal: Some(15),
            ..Default::default()
        }
        .shell_code(),
        143
    );
    assert_eq!(ErrorKind::NotFound.exit_code(), 127);
    assert_eq!(ErrorKind::PermissionDenied.exit_code(), 126);
}

#[tokio::test]
async fn reader_reports_truncation_mid_frame() {
    let bytes = Frame {
        stream: 1,
        body: Body::Data(Channel::Stdout, vec![1; 100]),
    }
    .to_bytes();
    let cut = &bytes[..50];
    let mut r = FrameReader::new(cut);
    match r.read_frame().await {
        Err(ReadError::Frame(FrameError::Truncated { got: 50, want: 110 })) => {}
        other => panic!("{other:?}"),
    }
    let mut r = FrameReader::new(&bytes[..4]);
    assert!(matches!(
        r.read_frame().await,
        Err(ReadError::Frame(FrameError::Truncated { got: 4, want: 10 }))
    ));
    // A clean end between frames is not an error.
    let mut r = FrameReader::new(&bytes[..]);
    assert!(r.read_frame().await.unwrap().is_some());
    assert!(r.read_frame().await.unwrap().is_none());
}

#[test]
fn setup_mounts_are_optional_on_the_wire_and_name_their_filesystem() {
    // A host from before volumes sends no `mounts`; the agent reads it as none.
    let old = r#"{"type":"setup","hostname":"h","lower":{"kind":"bare"},"upper":{"kind":"tmpfs"}}"#;
    match serde_json::from_str::<Message>(old).unwrap() {
        Message::Setup(s) => assert!(s.mounts.is_empty()),
        other => panic!("{other:?}"),
    }
    let setup = Setup {
        hostname: "h".into(),
        lower: Lower::Bare,
        upper: Upper::Tmpfs,
        workspace: None,
        mounts: vec![
            Mount {
                tag: "vol0".into(),
                guest_path: "/data".into(),
                read_only: true,
                fs: ShareFs::NineP,
            },
            Mount {
                tag: "vol1".into(),
                guest_path: "/src".into(),
                read_only: false,
                fs: ShareFs::Virtiofs,
            },
        ],
        network: None,
    };
    let json = serde_json::to_value(Message::Setup(setup.clone())).unwrap();
    assert_eq!(
        json["mounts"][0],
        serde_json::json!({"tag":"vol0","guest_path":"/data","read_only":true,"fs":"9p"})
    );
    assert_eq!(json["mounts"][1]["fs"], "virtiofs");
    assert_eq!(
        serde_json::from_value::<Message>(json).unwrap(),
        Message::Setup(setup)
    );
}
