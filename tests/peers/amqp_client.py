"""An AMQP 0-9-1 client (pika, not ours) for the broker tests; the broker's
URL, with its credentials, comes in the environment as AMQP_URL.

    amqp_client.py subscribe EXCHANGE ROUTING_KEY
        declares a server-named exclusive queue, binds it to EXCHANGE with
        ROUTING_KEY, prints `subscribed`, then one JSON line per message
        ({"topic": routing key, "payload": ...}) until it is killed.
    amqp_client.py publish EXCHANGE ROUTING_KEY MESSAGE...
        publishes each MESSAGE persistent with publisher confirms, prints
        `published N` once every one was confirmed and exits 0.
"""

import json
import os
import sys

import pika


def say(line):
    print(line, flush=True)


def main():
    mode, exchange, key = sys.argv[1], sys.argv[2], sys.argv[3]
    connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    channel = connection.channel()
    if mode == "subscribe":
        queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)

        def on_message(ch, method, _properties, body):
            say(json.dumps({"topic": method.routing_key, "payload": body.decode("utf-8", "replace")}))
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(queue=queue, on_message_callback=on_message)
        say("subscribed")
        channel.start_consuming()
    elif mode == "publish":
        channel.confirm_delivery()
        messages = sys.argv[4:]
        for m in messages:
            # Raises when the broker refuses or cannot route it (mandatory).
            channel.basic_publish(
                exchange=exchange,
                routing_key=key,
                body=m.encode(),
                properties=pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
        say(f"published {len(messages)}")
        connection.close()
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
