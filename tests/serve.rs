//! `berth serve` as a user runs it: the real binary, driven with curl.
