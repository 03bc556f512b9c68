"""JSON-constrained decoding for `response_format={"type": "json_object"}`.

`JsonMachine` is a byte-level pushdown automaton for one JSON object (RFC 8259; strings hold
well-formed UTF-8 sequences, so the text always decodes). A state is an immutable tuple, so checking a candidate token is
`machine.feed(state, token_bytes)` without copying anything.

Decoding uses it two ways (see `tuneforge.inference.decoding`):
- a sampled token is accepted only if its bytes keep the text a valid JSON prefix (and leave
  room to close it within `max_tokens`); otherwise it is masked out and sampling is redone,
  which samples exactly from the distribution restricted to valid tokens;
- when the token budget is down to what closing needs, `closing(state)` gives the shortest
  bytes that complete the object, and those are emitted. The text is therefore always valid
  JSON; `finish_reason` is "length" when the budget, not the model, ended it.
"""

from __future__ import annotations

# Modes. The stack holds "{" / "[" for the open containers.
TOP = "top"  # before the object: whitespace or "{"
OBJ_FIRST = "obj_first"  # after "{": a key or "}"
OBJ_KEY = "obj_key"  # after ",": a key
COLON = "colon"  # after a key
VALUE = "value"  # after ":" or ",": a value
ARR_FIRST = "arr_first"  # after "[": a value or "]"
AFTER = "after"  # after a value: "," or a closer
STRING = "string"
ESCAPE = "escape"
UNICODE = "unicode"  # aux: hex digits still needed
NUMBER = "number"  # aux: sub-state
LITERAL = "literal"  # aux: remaining bytes
DONE = "done"

_WS = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_NUM_END_OK = frozenset({"zero", "int", "frac", "exp"})

# UTF-8 lead byte -> (continuation bytes, lowest and highest allowed next byte) (RFC 3629).
_UTF8_LEAD: dict[int, tuple[int, int, int]] = {
    **{b: (1, 0x80, 0xBF) for b in range(0xC2, 0xE0)},
    0xE0: (2, 0xA0, 0xBF),
    **{b: (2, 0x80, 0xBF) for b in (*range(0xE1, 0xED), 0xEE, 0xEF)},
    0xED: (2, 0x80, 0x9F),
    0xF0: (3, 0x90, 0xBF),
    **{b: (3, 0x80, 0xBF) for b in range(0xF1, 0xF4)},
    0xF4: (3, 0x80, 0x8F),
}

State = tuple  # (mode, stack: str, is_key: bool, aux)

START: State = (TOP, "", False, None)


class JsonMachine:
    """Feeds bytes to JSON states; a failed transition returns None."""

    MAX_DEPTH = 32

    def feed(self, state: State | None, data: bytes) -> State | None:
        for byte in data:
            if state is None:
                return None
            state = self.step(state, byte)
        return state

    def step(self, state: State, b: int) -> State | None:
        mode, stack, is_key, aux = state
        if mode == STRING:
            # aux: (continuation bytes owed by a multi-byte UTF-8 character, lo, hi of the next)
            if aux:
                owed, lo, hi = aux
                if not lo <= b <= hi:
                    return None
                return (STRING, stack, is_key, (owed - 1, 0x80, 0xBF) if owed > 1 else None)
            if b == 0x22:  # closing quote
                return (COLON, stack, False, None) if is_key else self._after_value(stack)
            if b == 0x5C:
                return (ESCAPE, stack, is_key, None)
            if b < 0x20:
                return None  # control characters must be escaped
            if b < 0x80:
                return state
            lead = _UTF8_LEAD.get(b)
            return None if lead is None else (STRING, stack, is_key, lead)
        if mode == ESCAPE:
            if b in b'"\\/bfnrt':
                return (STRING, stack, is_key, None)
            if b == ord("u"):
                return (UNICODE, stack, is_key, 4)
            return None
        if mode == UNICODE:
            if b not in _HEX:
                return None
            return (STRING, stack, is_key, None) if aux == 1 else (UNICODE, stack, is_key, aux - 1)
        if mode == NUMBER:
            nxt = self._number(aux, b)
            if nxt is not None:
                return (NUMBER, stack, False, nxt)
            if aux not in _NUM_END_OK:
                return None
            return self.step(self._after_value(stack), b)
        if mode == LITERAL:
            if b != aux[0]:
                return None
            rest = aux[1:]
            return (LITERAL, stack, False, rest) if rest else self._after_value(stack)
        if b in _WS:
            return state
        if mode == TOP:
            return (OBJ_FIRST, "{", False, None) if b == ord("{") else None
        if mode == DONE:
            return None
        if mode in (OBJ_FIRST, OBJ_KEY):
            if b == 0x22:
                return (STRING, stack, True, None)
            if b == ord("}") and mode == OBJ_FIRST:
                return self._close(stack)
            return None
        if mode == COLON:
            return (VALUE, stack, False, None) if b == ord(":") else None
        if mode == ARR_FIRST and b == ord("]"):
            return self._close(stack)
        if mode in (VALUE, ARR_FIRST):
            return self._start_value(stack, b)
        if mode == AFTER:
            top = stack[-1]
            if b == ord(","):
                return (OBJ_KEY, stack, False, None) if top == "{" else (VALUE, stack, False, None)
            if (b == ord("}") and top == "{") or (b == ord("]") and top == "["):
                return self._close(stack)
            return None
        return None

    def _start_value(self, stack: str, b: int) -> State | None:
        if b == 0x22:
            return (STRING, stack, False, None)
        if b in (ord("{"), ord("[")):
            if len(stack) >= self.MAX_DEPTH:
                return None
            opener = chr(b)
            return (OBJ_FIRST if opener == "{" else ARR_FIRST, stack + opener, False, None)
        if b == ord("-"):
            return (NUMBER, stack, False, "minus")
        if b == ord("0"):
            return (NUMBER, stack, False, "zero")
        if b in _DIGITS:
            return (NUMBER, stack, False, "int")
        for word in (b"true", b"false", b"null"):
            if b == word[0]:
                return (LITERAL, stack, False, word[1:])
        return None

    @staticmethod
    def _number(sub: str, b: int) -> str | None:
        digit = b in _DIGITS
        if sub == "minus":
            return "zero" if b == ord("0") else ("int" if digit else None)
        if sub in ("zero", "int"):
            if digit and sub == "int":
                return "int"
            if b == ord("."):
                return "dot"
            return "e" if b in b"eE" else None
        if sub in ("dot", "frac"):
            if digit:
                return "frac"
            return "e" if sub == "frac" and b in b"eE" else None
        if sub == "e":
            return "esign" if b in b"+-" else ("exp" if digit else None)
        if sub in ("esign", "exp"):
            return "exp" if digit else None
        return None

    @staticmethod
    def _after_value(stack: str) -> State:
        return (AFTER, stack, False, None) if stack else (DONE, "", False, None)

    def _close(self, stack: str) -> State:
        return self._after_value(stack[:-1])

    @staticmethod
    def is_done(state: State | None) -> bool:
        return state is not None and state[0] == DONE

    def closing(self, state: State) -> bytes:
        """The shortest bytes that turn `state` into a complete object."""
        out = bytearray()
        while state[0] != DONE:
            mode, stack, _, aux = state
            if mode == STRING:
                b = aux[1] if aux else 0x22  # finish a started character, then the string
            elif mode == ESCAPE:
                b = ord("n")
            elif mode == UNICODE:
                b = ord("0")
            elif mode == NUMBER:
                b = ord("0") if aux not in _NUM_END_OK else ord("}" if stack[-1] == "{" else "]")
            elif mode == LITERAL:
                b = aux[0]
            elif mode == TOP:
                b = ord("{")
            elif mode == OBJ_FIRST:
                b = ord("}")
            elif mode == OBJ_KEY:
                b = 0x22
            elif mode == COLON:
                b = ord(":")
            elif mode == VALUE:
                b = ord("0")
            elif mode == ARR_FIRST:
                b = ord("]")
            else:  # AFTER
                b = ord("}" if stack[-1] == "{" else "]")
            nxt = self.step(state, b)
            assert nxt is not None, (state, b)
            state = nxt
            out.append(b)
        return bytes(out)
