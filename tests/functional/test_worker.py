"""The gunicorn worker (gateway/worker.py): idle keep-alive connections do not live forever."""
import socket
import time

MOCK_ONLY = """
    model_list:
      - {model_name: mock, litellm_params: {model: mock/x}}
    """


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_seconds(start_gateway):
    gateway = start_gateway(MOCK_ONLY, workers=1, env={"GUNICORN_CMD_ARGS": "--keep-alive=1"})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        client.sendall(b"GET /health/liveliness HTTP/1.1\r\nHost: gateway\r\n\r\n")
        response = b""
        while not response.endswith(b'{"status":"alive"}'):
            response += client.recv(4096)
        idle_since = time.monotonic()
        assert client.recv(4096) == b"", "the server sent something instead of closing"
        idle = time.monotonic() - idle_since
    assert 0.8 <= idle < 3.0, f"closed after {idle:.2f}s idle with keepalive 1 s"


def test_a_busy_keep_alive_connection_stays_open(start_gateway):
    """Requests closer together than `keepalive` keep reusing the same connection."""
    gateway = start_gateway(MOCK_ONLY, workers=1, env={"GUNICORN_CMD_ARGS": "--keep-alive=1"})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        reader = client.makefile("rb")
        for _ in range(5):
            client.sendall(b"GET /health/liveliness HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert reader.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert reader.read(length) == b'{"status":"alive"}'
            time.sleep(0.5)
