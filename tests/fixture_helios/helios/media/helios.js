// Client-side helpers of the election pages.
var HELIOS = { version: "fixture" };
