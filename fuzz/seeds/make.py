#!/usr/bin/env python3
"""Writes the seed inputs of the `validate` fuzz target into seeds/validate/.

An input is one selector byte (the RPC, modulo 10 on its low 7 bits; the high bit adds
`x-inject-failure`) and a protobuf-encoded request. Valid requests let the fuzzer start from
the paths a random byte string rarely reaches: a well-formed id, a stored order, a replay.
Run it again after a request message changes: python3 fuzz/seeds/make.py
"""
import pathlib
import uuid

OUT = pathlib.Path(__file__).resolve().parent / "validate"
INJECT = 0x80
ORDER = "ord-" + str(uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF))
PAYMENT = "pay-" + str(uuid.UUID(int=0x1111))
SHIPMENT = "shp-" + str(uuid.UUID(int=0x2222))


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values are ten-byte varints
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def string(field: int, value) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return key(field, 2) + varint(len(data)) + data


def number(field: int, value: int) -> bytes:
    return key(field, 0) + varint(value)


def line(sku="book", quantity=2, price=1250) -> bytes:
    return string(1, sku) + number(2, quantity) + number(3, price)


def create(idem="k1", user="alice", currency="EUR", items=(line(),)) -> bytes:
    body = string(1, idem) + string(2, user) + string(3, currency)
    return body + b"".join(string(4, item) for item in items)


SEEDS = {
    # order.v1
    "create-order": (0, create()),
    "create-order-two-lines": (0, create(items=(line(), line("pen", 1, 99)))),
    "create-order-overflow": (0, create(items=(line(quantity=2**32 - 1, price=2**63 - 1),))),
    "create-order-negative": (0, create(items=(line(price=-(2**63)),))),
    "cancel-order": (1, string(1, ORDER) + string(2, "payment declined")),
    "approve-order": (2, string(1, ORDER)),
    "get-order-by-id": (3, string(1, ORDER)),
    "get-order-by-key": (3, string(2, "k1")),
    # payment.v1
    "process-payment": (4, string(1, ORDER) + number(2, 2500) + string(3, "EUR")),
    "process-payment-injected": (4 | INJECT, string(1, ORDER) + number(2, 1) + string(3, "USD")),
    "refund-payment-by-id": (5, string(1, PAYMENT)),
    "refund-payment-by-order": (5, string(2, ORDER)),
    "get-payment-by-id": (6, string(1, PAYMENT)),
    "get-payment-by-order": (6, string(2, ORDER)),
    # shipping.v1
    "start-shipping": (7, string(1, ORDER) + string(2, "221B Baker Street, London")),
    "start-shipping-injected": (7 | INJECT, string(1, ORDER) + string(2, "1 Main St")),
    "cancel-shipping-by-id": (8, string(1, SHIPMENT)),
    "cancel-shipping-by-order": (8, string(2, ORDER)),
    "get-shipment-by-id": (9, string(1, SHIPMENT)),
    "get-shipment-by-order": (9, string(2, ORDER)),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    for name, (selector, message) in SEEDS.items():
        (OUT / name).write_bytes(bytes([selector]) + message)
    print(f"{len(SEEDS)} seeds in {OUT}")


if __name__ == "__main__":
    main()
