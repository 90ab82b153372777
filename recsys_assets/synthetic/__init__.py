"""Synthetic raw data in the platform's input contract (see README "Input data contract")."""
