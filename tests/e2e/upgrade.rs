//! WebSocket (and any `Upgrade`) through the gateway.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_through_the_gateway() {
    let upstream = TestUpstream::start("ws").await;
    let config = format!(
        "{SERVER}{}[[routes]]\npath = \"/ws\"\nupstream = \"ws\"\n",
        upstream_table("ws", &[(upstream.addr, 1)], "")
    );
    let gateway = GatewayProcess::start(&config);
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..5 {
        socket
            .send(Message::text(format!("hello {i}")))
            .await
            .unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap().into_data().as_ref(),
        &[1, 2, 3]
    );
    socket.close(None).await.unwrap();
}
