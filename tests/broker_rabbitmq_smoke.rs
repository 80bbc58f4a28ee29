//! The test RabbitMQ (tests/support/rabbitmq.rs) starts on free loopback
//! ports, speaks AMQP with its own credentials, survives a restart with its
//! durable data, and is gone when dropped.

mod support;

use std::net::TcpStream;
use std::time::Duration;

use support::rabbitmq::RabbitMq;

#[tokio::test]
async fn a_test_broker_starts_restarts_and_stops() -> anyhow::Result<()> {
    let broker = RabbitMq::start().await?;
    let addr = broker.amqp_addr();
    assert!(addr.ip().is_loopback());
    assert!(broker.amqp_url().contains(broker.password()));

    broker.restart(Duration::ZERO).await?;
    assert!(
        TcpStream::connect(addr).is_ok(),
        "listening again after the restart"
    );

    drop(broker);
    assert!(TcpStream::connect(addr).is_err(), "nothing listens once dropped");
    Ok(())
}
