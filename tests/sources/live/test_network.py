"""The network sensor on real sockets on loopback."""

from __future__ import annotations

import os
import socket
import sys

from agent_host.protocol import NetworkEvent
from agent_host.sources.live.network import NetworkSensor
from tests.sources.live.conftest import running


class TestNetworkSensor:
    """A new listening socket, an outbound connection and their closing are reported."""

    def test_listen_connect_close(self) -> None:
        with running(NetworkSensor(interval_s=0.05)) as seen:
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen()
            port = server.getsockname()[1]
            listens = seen.wait_for(
                lambda e: e.network.action == NetworkEvent.LISTEN and e.network.local_port == port
            )
            client = socket.create_connection(("127.0.0.1", port))
            peer, _ = server.accept()
            connects = seen.wait_for(
                lambda e: e.network.action == NetworkEvent.CONNECT and e.network.remote_port == port
            )
            client_port = client.getsockname()[1]
            client.close()
            peer.close()
            server.close()
            closes = seen.wait_for(
                lambda e: (
                    e.network.action == NetworkEvent.CLOSE and e.network.local_port == client_port
                )
            )
        me, exe = os.getpid(), os.path.realpath(sys.executable)
        listen = listens[0].network
        assert (listen.pid, listen.exe, listen.protocol, listen.local_address) == (
            me,
            exe,
            "tcp",
            "127.0.0.1",
        )
        assert len(connects) == 1, "the accepted side of the connection is not outbound"
        connect = connects[0].network
        assert (connect.pid, connect.exe, connect.local_port, connect.remote_address) == (
            me,
            exe,
            client_port,
            "127.0.0.1",
        )
        assert closes[0].network.remote_port == port
        assert connects[0].source == "sensor:network"
