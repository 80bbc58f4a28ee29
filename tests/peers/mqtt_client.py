"""An MQTT 3.1.1 client (paho-mqtt, not ours) for the broker tests.

    mqtt_client.py HOST PORT subscribe TOPIC
        connects anonymously, subscribes at QoS 1, prints `subscribed` once
        the broker granted it, then one JSON line per message
        ({"topic": ..., "payload": ...}) until it is killed.
    mqtt_client.py HOST PORT publish TOPIC MESSAGE...
        connects anonymously, publishes each MESSAGE at QoS 1, waits for every
        PUBACK, prints `published N` and exits 0.

With MQTT_TRANSPORT=websockets in the environment it speaks MQTT over a
WebSocket (path MQTT_WS_PATH, default /ws), as browsers and some devices do.

With MQTT_USERNAME in the environment it connects as that user, with
MQTT_PASSWORD (a Kubernetes token, never on the command line) as the
password.

A refused CONNECT prints `refused RC` and exits 3; a refused SUBSCRIBE prints
`refused subscribe` and exits 4; a connection the broker closes (how MQTT
3.1.1 refuses a publish) prints `disconnected` and exits 5.
"""

import json
import os
import sys
import threading

import paho.mqtt.client as mqtt


def client():
    transport = os.environ.get("MQTT_TRANSPORT", "tcp")
    if hasattr(mqtt, "CallbackAPIVersion"):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, transport=transport)
    else:
        c = mqtt.Client(protocol=mqtt.MQTTv311, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path=os.environ.get("MQTT_WS_PATH", "/ws"))
    return c


def code(rc):
    """A CONNACK or SUBACK code as a number (paho 2 wraps it, paho 1 not)."""
    return getattr(rc, "value", rc)


def say(line):
    print(line, flush=True)


def main():
    host, port, mode, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = client()
    connected = threading.Event()
    result = {}

    def on_connect(_c, _u, _flags, rc, *_properties):
        result["rc"] = code(rc)
        connected.set()

    c.on_connect = on_connect

    def on_disconnect(*_args):
        if not result.get("done"):
            say("disconnected")
            os._exit(5)

    c.on_disconnect = on_disconnect
    if os.environ.get("MQTT_USERNAME"):
        c.username_pw_set(os.environ["MQTT_USERNAME"], os.environ.get("MQTT_PASSWORD"))
    c.connect(host, port, keepalive=30)
    c.loop_start()
    if not connected.wait(30):
        say("no connack")
        sys.exit(2)
    if result["rc"] != 0:
        say(f"refused {result['rc']}")
        sys.exit(3)

    if mode == "subscribe":
        granted = threading.Event()

        def on_subscribe(_c, _u, _mid, codes, *_properties):
            result["qos"] = [code(c) for c in codes]
            granted.set()

        def on_message(_c, _u, msg):
            say(json.dumps({"topic": msg.topic, "payload": msg.payload.decode("utf-8", "replace")}))

        c.on_subscribe = on_subscribe
        c.on_message = on_message
        c.subscribe(topic, qos=1)
        if not granted.wait(30):
            say("no suback")
            sys.exit(2)
        if 128 in result["qos"]:
            say("refused subscribe")
            sys.exit(4)
        say("subscribed")
        threading.Event().wait()
    elif mode == "publish":
        messages = sys.argv[5:]
        infos = [c.publish(topic, m, qos=1) for m in messages]
        for info in infos:
            info.wait_for_publish(30)
            if not info.is_published():
                say("not acknowledged")
                sys.exit(2)
        say(f"published {len(messages)}")
        result["done"] = True
        c.disconnect()
        c.loop_stop()
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
