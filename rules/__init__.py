"""The rule language: parse, validate, compile, evaluate. Pure: takes a profile and now."""
