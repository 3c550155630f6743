package meshrun.interop;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;

/**
 * Spring Authorization Server with Boot's defaults: its client and user come from application.properties, its
 * issuer and port from the command line. No customizer: meshrun must take SAS's tokens as SAS mints them.
 */
@SpringBootApplication
public class AuthorizationServerApplication {

    public static void main(String[] args) {
        SpringApplication.run(AuthorizationServerApplication.class, args);
    }
}
