"""Tests of the azure (new agents) backend against the local emulator, with the real SDKs."""
