"""The Flower ``ClientApp`` of CoDream: routes each message type to the node's runtime.

Node configuration (``flower-supernode --node-config`` in deployment; set by the simulation):

``partition-id``  which client of the config this node is (data partition and, by default, model)
``model``         optional: another architecture from the registry for this node's private model
``data-root``     optional: folder of a torchvision dataset on this node (``data.root`` otherwise)
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from securedream.engines.flower import messages as m
from securedream.engines.flower.clientside import NodeRuntime, parse_config


def handle_message(message_type: str, msg: Message, context: Context, config_text: str) -> Message:
    """Run one CoDream request on this node and persist what it changed in ``context.state``."""
    cfg = parse_config(config_text)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    runtime = NodeRuntime.for_context(config_text, context)
    try:
        reply = runtime.handle(message_type, msg.content)
        runtime.save(context)
    except Exception:
        NodeRuntime.forget(context)  # the cached objects may be half-updated
        raise
    return Message(reply, reply_to=msg)


def make_client_app(config_text: str) -> ClientApp:
    """A ClientApp for the run whose resolved config TOML is ``config_text``."""
    app = ClientApp()

    def route(message_type: str) -> Any:
        def handler(msg: Message, context: Context) -> Message:
            return handle_message(message_type, msg, context, config_text)

        return handler

    app.query("hello")(route(m.HELLO))
    app.train()(route(m.TRAIN))
    app.query("dream")(route(m.DREAM))
    app.query("secagg")(route(m.SECAGG))
    app.train("distill")(route(m.DISTILL))
    return app
