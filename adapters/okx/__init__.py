"""OKX v5 feed adapter: wire decoding (pure) and, later, the live websocket client."""
