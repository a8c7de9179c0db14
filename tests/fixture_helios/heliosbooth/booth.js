// The voting booth runs entirely in the browser.
var BOOTH = { started: false };
