//! Relaying a client's stream to the agent and back, with flow control on both sides.

use smolvm_protocol::{Event, Message, Stream};

/// Relays one stream until the agent ends it. Each hop takes data only when the next one
/// has credit, so at most one chunk per direction sits in the supervisor. If the client
/// goes away first, `abandon` goes to the agent (a command's process group is killed, a
/// copy is cancelled and its staging removed): nothing is left that nobody can reach.
pub async fn relay(client: Stream, agent: Stream, abandon: Message) {
    let (to_client, mut from_client) = client.split();
    let (to_agent, mut from_agent) = agent.split();
    let down = async {
        while let Some(ev) = from_agent.recv().await {
            let delivered = match ev {
                Event::Data(ch, data) => to_client.send_data(ch, &data).await.is_ok(),
                Event::Eof(ch) => to_client.send_eof(ch).is_ok(),
                Event::Control(m) => {
                    let ends = m.ends_stream();
                    let sent = to_client.send(m).is_ok();
                    if ends {
                        return true;
                    }
                    sent
                }
            };
            if !delivered {
                return false;
            }
        }
        // The agent connection broke: tell the client rather than leave it waiting.
        let _ = to_client.send(Message::error(
            smolvm_protocol::ErrorKind::Io,
            "the machine's VM stopped before the command finished",
        ));
        true
    };
    let up = async {
        while let Some(ev) = from_client.recv().await {
            let _ = match ev {
                Event::Data(ch, data) => to_agent.send_data(ch, &data).await,
                Event::Eof(ch) => to_agent.send_eof(ch),
                Event::Control(m) => to_agent.send(m),
            };
        }
        // The client is gone (its connection closed): abandon the request, then let `down`
        // drain what the agent still sends until it ends the stream.
        let _ = to_agent.send(abandon.clone());
        std::future::pending::<()>().await;
    };
    let client_alive = tokio::select! {
        alive = down => alive,
        _ = up => unreachable!("up never completes"),
    };
    if !client_alive {
        let _ = to_agent.send(abandon);
    }
}
