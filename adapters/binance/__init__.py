"""Binance USDⓈ-M futures (issue 14): the decoder so far (adapters/binance/decode.py)."""
