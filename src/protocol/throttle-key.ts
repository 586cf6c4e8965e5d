// The syntax of a throttle key, shared by the control-session codec and the CONNECT parser. Pure.
export const THROTTLE_KEY = /^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$/;
