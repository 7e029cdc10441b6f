// The relay's browser client (being written).
export {};
