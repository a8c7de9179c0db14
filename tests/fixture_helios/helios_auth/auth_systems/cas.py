"""CAS single sign-on. As in Helios, the CAS server is fixed here, not a setting: only the
eligibility look-up takes credentials (CAS_USERNAME, CAS_PASSWORD...)."""

CAS_SERVER = "https://cas.university.example/cas/"
LOGIN_MESSAGE = "Log in with my university account"
