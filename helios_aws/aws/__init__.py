"""The AWS half: one session factory, and the steps that create or adopt resources."""
